"""The line rules (bort_infer.textlines): what is a line, what is not, and the same texts from every reader."""
import io

import pytest

from bort_infer.textlines import count_lines, iter_raw_lines, iter_texts, split_lines


@pytest.mark.parametrize("data, texts", [
    (b"", []),
    (b"\n", [""]),
    (b"a", ["a"]),
    (b"a\n", ["a"]),
    (b"a\n\n", ["a", ""]),
    (b"a\r\nb\r\n", ["a", "b"]),
    (b"\n\nlast", ["", "", "last"]),
    (b"\xef\xbb\xbfbom first\nx\n", ["bom first", "x"]),
    # none of these end a line (str.splitlines would split on all of them)
    ("v\x0bt\x0cf\x1cg\x1dh\x1ei\x85j\u2028k\u2029l\rm\n".encode(),
     ["v\x0bt\x0cf\x1cg\x1dh\x1ei\x85j\u2028k\u2029l\rm"]),
])
def test_line_rules(tmp_path, data, texts):
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    assert count_lines(path) == len(texts)
    assert split_lines(data) == texts


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 1 << 20])
def test_lines_read_in_any_block_size_are_the_same(block_size):
    data = b"\xef\xbb\xbfone\r\ntwo\n\nthree\rstill three\nlast"
    raw = list(iter_raw_lines(io.BytesIO(data), block_size=block_size))
    assert raw == [b"\xef\xbb\xbfone\r\n", b"two\n", b"\n", b"three\rstill three\n", b"last"]
    assert b"".join(raw) == data


def test_a_byte_range_read_from_a_line_start_gives_that_lines_texts():
    data = b"zero\none\ntwo\nthree\n"
    stream = io.BytesIO(data)
    stream.seek(data.index(b"one"))
    assert list(iter_texts(stream, "in", first_line=1, limit=data.index(b"three") - data.index(b"one"))) == [
        "one", "two"]


def test_invalid_utf8_names_its_line():
    with pytest.raises(ValueError, match="in: line 2 is not valid UTF-8"):
        list(iter_texts(io.BytesIO(b"ok\n\xff\n"), "in"))
