"""Resource quantities: CPU in millicores, sizes in bytes (binary units), GPUs as a count."""

from __future__ import annotations

import pytest

from meshnode.spec import QuantityError, parse_cpu_millicores, parse_gpu_count, parse_size_bytes

GIB = 2**30
MIB = 2**20
KIB = 2**10


@pytest.mark.parametrize(
    ("text", "millicores"),
    [
        ("250m", 250),
        ("0.25", 250),
        ("2", 2000),
        ("1", 1000),
        ("0.5", 500),
        (".5", 500),
        ("1.5", 1500),
        ("100m", 100),
        ("1m", 1),
        ("0.001", 1),
        ("0m", 0),
        ("0", 0),
        (" 250m ", 250),
        ("", 0),
        ("   ", 0),
    ],
)
def test_cpu_millicores(text: str, millicores: int) -> None:
    assert parse_cpu_millicores(text) == millicores


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0.0001", "finer than one millicore"),
        ("1.5m", "finer than one millicore"),
        ("0.0015", "finer than one millicore"),
        ("abc", "is not a CPU quantity"),
        ("-1", "is not a CPU quantity"),
        ("250M", "is not a CPU quantity"),
        ("2 cores", "is not a CPU quantity"),
        ("1e3", "is not a CPU quantity"),
        ("m", "is not a CPU quantity"),
    ],
)
def test_cpu_errors(text: str, fragment: str) -> None:
    with pytest.raises(QuantityError) as caught:
        parse_cpu_millicores(text)
    message = str(caught.value)
    assert fragment in message
    assert f'"{text}"' in message


def test_cpu_error_lists_examples() -> None:
    with pytest.raises(QuantityError, match=r'^"abc" is not a CPU quantity \(examples: '):
        parse_cpu_millicores("abc")


def test_cpu_finer_than_a_millicore_even_past_28_digits() -> None:
    # 1.0000000000000000000000000001 millicores: finer than one millicore. Exact arithmetic
    # must see the trailing 1 (a 28-digit decimal context rounds it away).
    text = "0.0010000000000000000000000000001"
    with pytest.raises(QuantityError, match="finer than one millicore"):
        parse_cpu_millicores(text)


def test_cpu_upper_bound() -> None:
    assert parse_cpu_millicores("1000000") == 10**9
    with pytest.raises(QuantityError, match="more CPU than meshnode accepts"):
        parse_cpu_millicores("1000001")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1Gb", GIB),
        ("1GB", GIB),
        ("1Gi", GIB),
        ("1G", GIB),
        ("1GiB", GIB),
        ("1gb", GIB),
        ("100mb", 100 * MIB),
        ("100MB", 100 * MIB),
        ("4Gb", 4 * GIB),
        ("512Mi", 512 * MIB),
        ("512Mi", 536870912),
        ("128Mb", 128 * MIB),
        ("1.5GB", 1610612736),
        ("1.5Gi", 1610612736),
        ("1024", 1024),
        ("1024b", 1024),
        ("1Ki", KIB),
        ("1k", KIB),
        ("2Ti", 2 * 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("0", 0),
        ("0.5", 1),  # not a whole number of bytes: rounded up
        ("1.5", 2),
        ("0.5Ki", 512),
        ("512 Mi", 512 * MIB),
        (" 1Gb ", GIB),
        ("", 0),
        ("  ", 0),
    ],
)
def test_size_bytes(text: str, size: int) -> None:
    assert parse_size_bytes(text) == size


def test_binary_units_agree() -> None:
    assert parse_size_bytes("1Gb") == parse_size_bytes("1GB") == parse_size_bytes("1Gi") == 2**30


@pytest.mark.parametrize("text", ["1 Gigs", "1Gigs", "abc", "-1", "1Xb", "Gb", "1.2.3Gb", "1 G B"])
def test_size_errors(text: str) -> None:
    with pytest.raises(QuantityError) as caught:
        parse_size_bytes(text)
    assert str(caught.value).startswith(f'"{text}" is not a size (examples: ')
    assert "512Mi" in str(caught.value)


def test_size_error_message_for_gigs() -> None:
    with pytest.raises(QuantityError) as caught:
        parse_size_bytes("1 Gigs")
    assert str(caught.value) == '"1 Gigs" is not a size (examples: 512Mi, 1Gb, 1.5GB, 100mb)'


def test_size_rounds_up_exactly_past_28_digits() -> None:
    # One part in 10**28 over 1 GiB: not a whole number of bytes, so rounded up, never down.
    assert parse_size_bytes("1.0000000000000000000000000001Gi") == 2**30 + 1


def test_size_upper_bound() -> None:
    assert parse_size_bytes("4Ei") == 2**62
    with pytest.raises(QuantityError, match="larger than the largest size"):
        parse_size_bytes("5Ei")


@pytest.mark.parametrize(
    ("text", "count"), [("0", 0), ("1", 1), ("2", 2), ("8", 8), (" 3 ", 3), ("", 0), ("  ", 0)]
)
def test_gpu_count(text: str, count: int) -> None:
    assert parse_gpu_count(text) == count


@pytest.mark.parametrize("text", ["1.5", "-1", "+1", "one", "1e2", "١", "²"])
def test_gpu_errors(text: str) -> None:
    with pytest.raises(QuantityError) as caught:
        parse_gpu_count(text)
    assert str(caught.value).startswith(f'"{text}" is not a whole number of GPUs')


def test_gpu_upper_bound() -> None:
    assert parse_gpu_count("1000000") == 10**6
    with pytest.raises(QuantityError, match="more GPUs than meshnode accepts"):
        parse_gpu_count("1000001")


def test_quantity_error_is_a_value_error() -> None:
    assert issubclass(QuantityError, ValueError)
