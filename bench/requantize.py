"""Requantize a GGUF's matrices to another type with the `gguf` package (a speed experiment, not a model to serve:
dequantizing and quantizing again loses a little of the original's accuracy).

    .venv/bin/python -m bench.requantize SRC.gguf DST.gguf --type Q8_0

The embedded SmolLM2 ships as Q4_1, which llama.cpp's CPU backend multiplies one token at a time; Q8_0 (and Q4_0)
go through its batched kernel, so several tokens in a step cost less (bench/speculative.py measures both).
Metadata is copied as is; 1-D tensors and matrices whose rows are not a multiple of 32 are stored as F32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize


def text(field, index: int) -> str:
    return bytes(field.parts[index]).decode("utf-8", "surrogateescape")


def requantize(source: Path, target: Path, kind: GGMLQuantizationType) -> None:
    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"]
    writer = GGUFWriter(target, text(arch, arch.data[0]))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value_type = field.types[0]
        if value_type == GGUFValueType.ARRAY:
            item_type = field.types[1]
            if item_type == GGUFValueType.STRING:
                items = [text(field, i) for i in field.data]
            else:
                items = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(name, items, value_type, sub_type=item_type)
        elif value_type == GGUFValueType.STRING:
            writer.add_key_value(name, text(field, field.data[0]), value_type)
        else:
            writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], value_type)
    for tensor in reader.tensors:
        shape = tuple(reversed([int(n) for n in tensor.shape]))
        values = dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
        if values.ndim == 2 and shape[-1] % 32 == 0:
            writer.add_tensor(tensor.name, quantize(values, kind), raw_dtype=kind)
        else:
            writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--type", default="Q8_0", choices=("Q8_0", "Q4_0"))
    args = parser.parse_args()
    requantize(args.source, args.target, GGMLQuantizationType[args.type])
    sys.stdout.write(f"wrote {args.target}\n")


if __name__ == "__main__":
    main()
