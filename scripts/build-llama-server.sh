#!/usr/bin/env bash
# Builds llama.cpp's own llama-server (the benchmark peer of bench/compare.py --peer llama-server) once per CPU type
# from the llama.cpp sources vendored in the pinned llama-cpp-python sdist, so both servers run the same llama.cpp.
# CPU only, native (like the Makefile's wheel), cached outside the checkout and keyed the same way; prints the path.
#
#   scripts/build-llama-server.sh            -> /root/.cache/slm-server/llama-server-0.3.36-native-<CPU_KEY>/llama-server
#   scripts/build-llama-server.sh --cached   -> the same path if already built, else exit status 3 (builds nothing)
#
# Environment: PYTHON (for pip download; default .venv/bin/python, else python3), SDIST_DIR (an unpacked
# llama_cpp_python-<version> sdist to build from instead of downloading one), JOBS (default 2),
# LLAMA_SERVER_DIR (the cache folder). Build output goes to stderr; stdout is only the binary's path.
set -euo pipefail

LLAMA_CPP_VERSION=0.3.36
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The same key as the Makefile's wheel cache: a native build only runs on CPUs with the same flags.
CPU_KEY="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-12)"
OUT_DIR="${LLAMA_SERVER_DIR:-$HOME/.cache/slm-server/llama-server-$LLAMA_CPP_VERSION-native-$CPU_KEY}"
BINARY="$OUT_DIR/llama-server"
JOBS="${JOBS:-2}"

log() { echo "build-llama-server: $*" >&2; }
die() { log "error: $*"; exit 1; }

# All in a function: bash parses it whole before running, so editing this file mid-build cannot derail it.
main() {
    if [[ -x "$BINARY" && -f "$OUT_DIR/.built" ]]; then
        echo "$BINARY"
        exit 0
    fi
    if [[ "${1:-}" == "--cached" ]]; then
        log "not built yet: $BINARY"
        exit 3
    fi

    missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || command -v ninja >/dev/null 2>&1 || missing+=(make)
    if ((${#missing[@]})); then
        die "missing ${missing[*]}; install with: apt-get install -y ${missing[*]}"
    fi

    mkdir -p "$OUT_DIR"
    # One build at a time per cache folder; a second caller waits, then finds the binary.
    exec 9>"$OUT_DIR/.lock"
    flock 9
    if [[ -x "$BINARY" && -f "$OUT_DIR/.built" ]]; then
        echo "$BINARY"
        exit 0
    fi

    WORK="$(mktemp -d "$OUT_DIR/.work.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT

    SDIST_DIR="${SDIST_DIR:-/tmp/sdist/llama_cpp_python-$LLAMA_CPP_VERSION}"
    if [[ ! -f "$SDIST_DIR/vendor/llama.cpp/CMakeLists.txt" ]]; then
        if [[ -z "${PYTHON:-}" ]]; then
            if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
        fi
        log "downloading the llama-cpp-python $LLAMA_CPP_VERSION sdist"
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$WORK/sdist" >&2 \
            || die "could not download the llama-cpp-python $LLAMA_CPP_VERSION sdist"
        tar -xzf "$WORK/sdist/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$WORK/sdist"
        SDIST_DIR="$WORK/sdist/llama_cpp_python-$LLAMA_CPP_VERSION"
    fi
    SOURCE="$SDIST_DIR/vendor/llama.cpp"
    [[ -f "$SOURCE/tools/server/CMakeLists.txt" ]] || die "$SOURCE has no tools/server"

    # Static (one self-contained binary to cache), no HTTPS/curl (it serves loopback only, loads local files), no web UI
    # (neither the npm build nor the prebuilt download: no network here), no tests/examples.
    CMAKE_FLAGS=(
        -DCMAKE_BUILD_TYPE=Release
        -DBUILD_SHARED_LIBS=OFF
        -DGGML_NATIVE=ON
        -DLLAMA_CURL=OFF
        -DLLAMA_OPENSSL=OFF
        -DLLAMA_BUILD_SERVER=ON
        -DLLAMA_BUILD_TOOLS=ON
        -DLLAMA_BUILD_TESTS=OFF
        -DLLAMA_BUILD_EXAMPLES=OFF
        -DLLAMA_BUILD_UI=OFF
        -DLLAMA_USE_PREBUILT_UI=OFF
    )
    log "configuring $SOURCE (${CMAKE_FLAGS[*]})"
    started=$SECONDS
    cmake -S "$SOURCE" -B "$WORK/build" "${CMAKE_FLAGS[@]}" >&2
    log "building llama-server with -j$JOBS"
    cmake --build "$WORK/build" --target llama-server -j "$JOBS" >&2
    built="$(find "$WORK/build" -type f -name llama-server -perm -u+x | head -n1)"
    [[ -n "$built" ]] || die "the build finished without a llama-server binary"
    "$built" --version >&2 || die "the built llama-server does not run"

    cp "$built" "$OUT_DIR/.llama-server.tmp"
    mv "$OUT_DIR/.llama-server.tmp" "$BINARY"
    {
        echo "llama-cpp-python $LLAMA_CPP_VERSION (vendor/llama.cpp)"
        echo "cmake ${CMAKE_FLAGS[*]}"
        echo "built in $((SECONDS - started)) s on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$OUT_DIR/BUILD-INFO"
    touch "$OUT_DIR/.built"
    log "built in $((SECONDS - started)) s"
    echo "$BINARY"
}

main "$@"
