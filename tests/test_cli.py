"""The `tfcompress` command: the happy path and every bad-input case of the spine issue."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tfcompress.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tfcompress.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_lenet, synthetic_data, lenet_int8_path):
    root = tmp_path_factory.mktemp("cli")
    trained_lenet.save(root / "lenet.keras")
    np.savez(root / "calib.npz", x=synthetic_data[0][:64])
    np.savez(root / "empty.npz", x=np.zeros((0, 28, 28, 1), np.float32))
    np.savez(root / "wrong.npz", x=np.zeros((8, 32, 32, 1), np.float32))
    (root / "notes.txt").write_text("not a model\n")
    (root / "zero.npz").write_bytes(b"")
    np.savez(root / "noarrays.npz")
    data = lenet_int8_path.read_bytes()
    (root / "good.tflite").write_bytes(data)
    (root / "truncated.tflite").write_bytes(data[: len(data) // 3])
    corrupted = bytearray(data)
    corrupted[4:8] = b"ABCD"
    (root / "corrupted.tflite").write_bytes(bytes(corrupted))
    (root / "random.tflite").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    keras_bytes = (root / "lenet.keras").read_bytes()
    (root / "broken.keras").write_bytes(keras_bytes[: len(keras_bytes) // 2])
    with zipfile.ZipFile(root / "fake.keras", "w") as z:
        z.writestr("config.json", "{not json")
    return root


def _assert_clean_failure(capsys, code, argv, expected_code=1, message=None):
    result = main(argv)
    captured = capsys.readouterr()
    assert result == expected_code, (argv, result, captured.err)
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("tfcompress: ")]
    assert len(lines) == 1, captured.err
    assert "error:" in lines[0] and "Traceback" not in captured.err
    if message:
        assert message in lines[0], lines[0]
    return lines[0]


def test_convert_inspect_micro_edgetpu_bench_happy_path(files, capsys, tmp_path):
    out = tmp_path / "m.tflite"
    assert main(["convert", str(files / "lenet.keras"), "-o", str(out), "--int8", "--calibration", str(files / "calib.npz"), "--samples", "32", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "int8 coverage  100.0%" in text and out.exists()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["int8_coverage"] == 1.0 and info["ops"]["CONV_2D"] == 2
    assert info["inputs"][0]["dtype"] == "int8" and "edgetpu" in info
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "per-channel x20" in text and "edge tpu" in text
    assert main(["bench", str(out), str(files / "good.tflite"), "--runs", "10", "--warmup", "2", "--json", "--quiet"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert len(bench["results"]) == 2 and bench["results"][0]["ratio_to_first"] == 1.0
    micro_dir = tmp_path / "micro"
    assert main(["micro", str(out), "-o", str(micro_dir), "--name", "lenet", "--quiet"]) == 0
    capsys.readouterr()
    assert (micro_dir / "lenet_model_data.cc").exists() and (micro_dir / "lenet_model_data.h").exists()
    code = main(["edgetpu", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["ready"] else 1)


def test_help_shows_an_example_for_every_command():
    for command in ("convert", "inspect", "bench", "micro", "edgetpu", "demo"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "example:" in result.stdout and "tfcompress" in result.stdout, command


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "{f}/missing.keras", "-o", "{t}/o.tflite", "--float32"], "file not found"),
        (["convert", "{f}/notes.txt", "-o", "{t}/o.tflite", "--float32"], "not a Keras 3 .keras model"),
        (["convert", "{f}/good.tflite", "-o", "{t}/o.tflite", "--float32"], "a .tflite input can be quantized to int8"),  # a float .tflite is quantizable (issue 22), not convertible to float
        (["convert", "{f}/broken.keras", "-o", "{t}/o.tflite", "--float32"], "not a Keras 3 .keras model"),
        (["convert", "{f}/fake.keras", "-o", "{t}/o.tflite", "--float32"], "cannot load the Keras model"),
        (["convert", "{f}/lenet.keras", "-o", "{t}/o.tflite", "--int8", "--calibration", "{f}/empty.npz"], "empty"),
        (["convert", "{f}/lenet.keras", "-o", "{t}/o.tflite", "--int8", "--calibration", "{f}/wrong.npz"], "expects (28, 28, 1)"),
        (["convert", "{f}/lenet.keras", "-o", "{t}/o.tflite", "--int8", "--calibration", "{f}/notes.txt"], "cannot read calibration file"),
        (["convert", "{f}/lenet.keras", "-o", "{t}/o.tflite", "--int8", "--calibration", "{f}/zero.npz"], "calibration"),
        (["convert", "{f}/lenet.keras", "-o", "{t}/o.tflite", "--int8", "--calibration", "{f}/noarrays.npz"], "calibration"),
        (["convert", "{f}/lenet.keras", "-o", "{t}/o.tflite", "--int8"], "needs calibration"),
        (["convert", "{f}/lenet.keras", "-o", "{t}/o.bin", "--float32"], "must end in .tflite"),
        (["convert", "{f}/lenet.keras", "-o", "{t}/nodir/o.tflite", "--float32"], "output directory does not exist"),
        (["inspect", "{f}/missing.tflite"], "file not found"),
        (["inspect", "{f}/truncated.tflite"], "truncated"),
        (["inspect", "{f}/corrupted.tflite"], "TFL3"),
        (["inspect", "{f}/random.tflite"], "TFL3"),
        (["inspect", "{f}/lenet.keras"], ".keras zip archive"),
        (["bench", "{f}/truncated.tflite", "--runs", "5"], "truncated"),
        (["micro", "{f}/truncated.tflite", "-o", "{t}/micro"], "truncated"),
        (["edgetpu", "{f}/corrupted.tflite"], "TFL3"),
        (["bench", "{f}/good.tflite", "{f}/notes.txt", "--runs", "5"], "notes.txt"),
        (["bench", "{f}/lenet.keras", "--runs", "5"], ".keras zip archive"),
        (["micro", "{f}/lenet.keras", "-o", "{t}/micro"], ".keras zip archive"),
        (["micro", "{f}/random.tflite", "-o", "{t}/micro"], "TFL3"),
        (["edgetpu", "{f}/notes.txt"], "notes.txt"),
        (["edgetpu", "{f}/missing.tflite"], "file not found"),
    ],
)
def test_bad_input_gives_one_line_and_no_output(files, capsys, tmp_path, argv, message):
    argv = [a.format(f=files, t=tmp_path) for a in argv]
    _assert_clean_failure(capsys, 1, argv, 1, message)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("delegate", ["edgetpu", "/nonexistent/libdelegate.so"])
def test_delegate_that_does_not_load_exits_2(files, capsys, delegate):
    _assert_clean_failure(capsys, 2, ["bench", str(files / "good.tflite"), "--delegate", delegate, "--runs", "3"], 2, "delegate")


def test_real_process_exit_codes_and_verbose(files, tmp_path):
    result = run_cli("inspect", str(files / "truncated.tflite"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    result = run_cli("bench", str(files / "good.tflite"), "--delegate", "edgetpu", "--runs", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_cli("inspect", str(files / "truncated.tflite"), "--verbose")
    assert result.returncode != 0 and "Traceback" in result.stderr
    result = run_cli("convert", str(files / "lenet.keras"), "-o", str(tmp_path / "x.tflite"), "--samples", "0")
    assert result.returncode == 2 and "must be >= 1" in result.stderr
    assert not (tmp_path / "x.tflite").exists()


def test_python_dash_m_tfcompress_is_the_command(tmp_path):
    import subprocess
    import sys

    version = subprocess.run([sys.executable, "-m", "tfcompress", "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("tfcompress ")
    missing = subprocess.run([sys.executable, "-m", "tfcompress", "inspect", str(tmp_path / "none.tflite")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "file not found" in missing.stderr and "Traceback" not in missing.stderr
