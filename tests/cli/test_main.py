"""`bort-infer` command line: create-random and export end to end, and clear errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bort_infer import Session
from bort_infer.cli.main import main


def test_create_random_then_export_then_encode(tmp_path, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "model"
    assert main(["create-random", "tiny-bort", str(ckpt), "--seed", "7"]) == 0
    assert json.loads((ckpt / "config.json").read_text())["hidden_size"] == 128
    assert main(["export", str(ckpt), str(out), "--no-custom-ops", "--ort-format"]) == 0
    text = capsys.readouterr().out
    assert "custom ops: none" in text and "ORT format: model.ort (same token states as model.onnx)" in text
    assert Session(out).encode(["hi"]).shape == (1, 128)
    assert Session(out).info["ort_file"] == "model.ort"


def test_export_error_is_reported_not_raised(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing" / "x"), str(tmp_path / "out"), "--no-custom-ops"]) == 2
    assert "bort-infer export: error:" in capsys.readouterr().err


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "bort_infer.cli.main", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "create-random" in proc.stdout and "export" in proc.stdout


def test_export_int8_prints_its_fidelity_and_honours_calibration(tmp_path, capsys, checkpoints):
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("A man is riding a horse.\nTwo dogs play in the snow.\n\nThe market fell sharply.\n")
    out = tmp_path / "int8"
    assert main(["export", str(checkpoints("tiny-bort")), str(out), "--quantize", "int8", "--calibration",
                 str(calibration), "--max-drop", "0.05"]) == 0
    text = capsys.readouterr().out
    assert "int8 vs fp32 on" in text and "passed" in text and "same text alone vs in a batch" in text
    info = Session(out).info
    assert info["fidelity"]["calibration"]["source"] == "user" and info["fidelity"]["calibration"]["texts"] == 3
    assert info["fidelity"]["gate"]["max_drop"] == 0.05


def test_export_bf16_prints_its_fidelity_and_size(tmp_path, capsys, checkpoints):
    out = tmp_path / "bf16"
    assert main(["export", str(checkpoints("tiny-bort")), str(out), "--precision", "bf16"]) == 0
    text = capsys.readouterr().out
    assert "(bf16, pooling cls, custom ops: EmbedLayerNormBf16, LinearBf16" in text
    assert "bf16 vs fp32 on" in text and "(gate: min >= 0.9999: passed)" in text and "MB bf16" in text
    assert Session(out).info["precision"] == "bf16"


def test_export_rejects_unusable_options(tmp_path, capsys, checkpoints):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    src = str(checkpoints("tiny-bort"))
    assert main(["export", src, str(tmp_path / "a"), "--quantize", "int8", "--calibration", str(empty)]) == 2
    assert "holds no text" in capsys.readouterr().err
    assert main(["export", src, str(tmp_path / "b"), "--max-drop", "0.1"]) == 2
    assert "apply to an int8 export" in capsys.readouterr().err
    assert main(["export", src, str(tmp_path / "d"), "--precision", "bf16", "--quantize", "int8"]) == 2
    assert "--quantize int8 contradicts --precision bf16" in capsys.readouterr().err
    assert main(["export", src, str(tmp_path / "e"), "--precision", "bf16", "--no-custom-ops"]) == 2
    assert "needs custom ops" in capsys.readouterr().err
    assert main(["export", src, str(tmp_path / "c"), "--no-custom-ops", "--form", "packed"]) == 2
    assert "needs custom ops" in capsys.readouterr().err
    assert main(["export", src, str(tmp_path / "d"), "--gemm", "mlas"]) == 2
    assert "it needs --precision int8 and custom ops" in capsys.readouterr().err
    assert main(["export", src, str(tmp_path / "e"), "--quantize", "int8", "--no-custom-ops", "--gemm", "ours"]) == 2
    assert "it needs --precision int8 and custom ops" in capsys.readouterr().err
    assert main(["export", src, str(tmp_path / "f"), "--int8-weights", "pair-safe"]) == 2
    assert "--int8-weights chooses how" in capsys.readouterr().err


def test_ops_config_writes_the_operator_config(exports, tmp_path, capsys):
    out = tmp_path / "ops.config"
    assert main(["ops-config", str(exports("tiny-bort")), str(exports("tiny-bort", custom_ops=False)),
                 "-o", str(out)]) == 0
    assert "--include_ops_by_config" in capsys.readouterr().out
    assert any(line.startswith("ai.bort_infer;1;") for line in out.read_text().splitlines())
    assert main(["ops-config", str(tmp_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bort-infer ops-config: error:" in err and "bort_infer.json is missing" in err


ROOT = Path(__file__).resolve().parents[2]


def start_export_and_wait_for_its_work_directory(checkpoint, out: Path, tmpdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "bort_infer.cli.main", "export", str(checkpoint), str(out),
                             "--quantize", "int8"], cwd=ROOT, env={**os.environ, "TMPDIR": str(tmpdir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(out.parent.glob(f".{out.name}.partial-*/tokenizer.json")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the export did not start its work directory: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the export (torch.onnx export, fusions)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_export_leaves_nothing_behind(tmp_path, checkpoints, signum):
    tmpdir, out = tmp_path / "tmp", tmp_path / "out" / "model"
    tmpdir.mkdir()
    out.parent.mkdir()
    proc = start_export_and_wait_for_its_work_directory(checkpoints("tiny-bort"), out, tmpdir)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 128 + signum
    assert "Traceback" not in proc.stderr.read().decode()
    assert list(out.parent.iterdir()) == [] and ours(tmpdir) == []


def ours(tmpdir: Path) -> list[Path]:
    """What is left in TMPDIR, less what libraries keep there by design: onnxruntime's telemetry session id
    (.ses, written when it is imported) and torch's compile cache."""
    return [p for p in tmpdir.iterdir() if p.name != ".ses" and not p.name.startswith("torchinductor_")]


def test_the_next_export_removes_what_a_killed_one_left(tmp_path, checkpoints):
    tmpdir, out = tmp_path / "tmp", tmp_path / "out" / "model"
    tmpdir.mkdir()
    out.parent.mkdir()
    proc = start_export_and_wait_for_its_work_directory(checkpoints("tiny-bort"), out, tmpdir)
    proc.kill()  # SIGKILL: nothing runs, the work directory stays
    proc.wait(timeout=60)
    assert [p.name.startswith(".model.partial-") for p in out.parent.iterdir()] == [True]
    assert main(["export", str(checkpoints("tiny-bort")), str(out), "--no-custom-ops"]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["model"]


def test_export_a_head_prints_its_task_and_honours_task_and_evaluation(tmp_path, capsys, head_checkpoints):
    src = str(head_checkpoints("regression"))
    evaluation = tmp_path / "eval.txt"
    evaluation.write_text("a dog runs\tthe dog is running\nthe market fell\ntwo men talk\tmen are talking\n")
    assert main(["export", src, str(tmp_path / "int8"), "--quantize", "int8", "--evaluation", str(evaluation),
                 "--min-spearman", "0.0"]) == 0
    out = capsys.readouterr().out
    assert "(int8, sequence-classification, labels score, activation none" in out
    assert "fp32 logits vs PyTorch: max abs diff" in out
    assert "int8 vs fp32 on 3 held-out inputs (user): spearman" in out
    assert main(["export", src, str(tmp_path / "emb"), "--task", "embedding"]) == 0
    assert Session(tmp_path / "emb").metadata.task == "embedding"
    assert main(["export", src, str(tmp_path / "x"), "--min-agreement", "0.9"]) == 2
    assert "apply to an int8 export" in capsys.readouterr().err
