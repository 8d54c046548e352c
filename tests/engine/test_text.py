from server.engine.text import TextAssembler


def feed(assembler: TextAssembler, pieces: list[bytes]) -> tuple[str, bool]:
    out, stopped = "", False
    for piece in pieces:
        step = assembler.push(piece)
        out += step.text
        stopped = stopped or step.stopped
    if not stopped:
        out += assembler.finish()
    return out, stopped


def test_utf8_character_split_across_tokens_is_never_split():
    snowman = "☃".encode()
    assembler = TextAssembler()
    assert assembler.push(b"a" + snowman[:1]).text == "a"
    assert assembler.push(snowman[1:2]).text == ""
    assert assembler.push(snowman[2:]).text == "☃"


def test_invalid_bytes_become_replacement_characters_at_the_end():
    assert feed(TextAssembler(), [b"ok", b"\xe2\x98"]) == ("ok\ufffd", False)


def test_stop_string_spanning_tokens_is_cut_and_not_emitted():
    assert feed(TextAssembler(["END"]), [b"the E", b"N", b"D and more"]) == ("the ", True)


def test_partial_stop_is_held_back_then_released():
    assembler = TextAssembler(["\n\n"])
    assert assembler.push(b"line\n").text == "line"
    assert assembler.push(b"next").text == "\nnext"


def test_earliest_of_several_stops_wins():
    assert feed(TextAssembler(["b", "xyz"]), [b"axyzb"]) == ("a", True)


def test_held_tail_is_released_when_generation_ends():
    assert feed(TextAssembler(["STOP"]), [b"ST"]) == ("ST", False)


def test_nothing_after_a_stop():
    assembler = TextAssembler(["x"])
    assert assembler.push(b"ax").stopped
    assert assembler.push(b"more").text == ""
    assert assembler.finish() == ""
