"""Bad input at the ``bipeft`` command, table-driven: each case exits
non-zero with one clear message that names the value (no traceback), and —
where a corrected command exists — that command then succeeds with the same
``--out``. The model is a tiny random BERT with MiniLM's tokenizer; the data
a small copy of the shared RTE files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from bipeft_core import cli

TRIGGER = 'search.trigger={name="budget_stability",warmup_epochs=0.25,max_triggers=6,window=2}'


@pytest.fixture(scope="module")
def small_data(data_dir, tmp_path_factory) -> Path:
    """The first rows of the shared RTE files, in a data folder of their own."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "glue" / "RTE"
    folder.mkdir(parents=True)
    for name, rows in (("train.tsv", 120), ("dev.tsv", 60)):
        lines = (data_dir / "glue" / "RTE" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / name).write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def model_variants(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Broken copies of the tiny model: no tokenizer, no config, a tokenizer
    larger than the embedding table."""
    import transformers as T

    root = tmp_path_factory.mktemp("models")
    out = {}
    no_tok = root / "no-tokenizer"
    no_tok.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name in ("config.json", "model.safetensors", "pytorch_model.bin"):
            shutil.copy(f, no_tok / f.name)
    out["no_tokenizer"] = no_tok
    no_cfg = root / "no-config"
    shutil.copytree(tiny_model_dir, no_cfg)
    (no_cfg / "config.json").unlink()
    out["no_config"] = no_cfg
    small = root / "small-vocab"
    cfg = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=64)
    T.BertForSequenceClassification(cfg).save_pretrained(small)
    T.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(small)
    out["small_vocab"] = small
    return out


@attrs.define
class Ctx:
    tmp: Path
    model: Path
    data: Path
    models: dict[str, Path]
    finished: Path
    searched: Path

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    def args(self, command: str = "run", **changes: str) -> list[str]:
        """A quick command on the tiny model; ``changes`` replace flags (``model="x"``)
        or, with a ``None`` value, drop them."""
        flags = {"--task": "rte", "--model": str(self.model), "--out": str(self.out),
                 "--data-dir": str(self.data), "--max-train": "16", "--epochs": "1", "--budget": "2000"}
        for key, value in changes.items():
            flag = "--" + key.replace("_", "-")
            if value is None:
                flags.pop(flag, None)
            else:
                flags[flag] = value
        out = [command]
        for flag, value in flags.items():
            out += [flag, value]
        return out + ["--set", TRIGGER, "--set", "search.batch_size=8", "--set", "retrain.batch_size=8"]

    def data_copy(self, edit: Callable[[Path], None]) -> str:
        root = self.tmp / "bad-data"
        shutil.copytree(self.data, root)
        edit(root / "glue" / "RTE")
        return str(root)

    def spec(self, text: str | bytes) -> str:
        path = self.tmp / "spec.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return str(path)


def _replace_in(name: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        text = (folder / name).read_text(encoding="utf-8")
        (folder / name).write_text(text.replace(old, new, 1), encoding="utf-8")
    return edit


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def _latin1(folder: Path) -> None:
    text = (folder / "train.tsv").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    lines[3] = lines[3].replace("\t", " caf\xe9\t", 1)
    (folder / "train.tsv").write_bytes("".join(lines).encode("latin-1", errors="replace"))


def _unfinished_run(c: Ctx) -> Path:
    """A run folder with spec.toml and run.json but no finished stage."""
    from bipeft_core.pipeline import Pipeline
    from bipeft_core.plugins import load_plugins
    from bipeft_core.runner import Run

    args = cli.build_parser().parse_args(c.args())
    pipe = Pipeline.from_dict(cli.build_spec(args, plugins=load_plugins()), plugins=load_plugins())
    Run.create(c.tmp / "unfinished", pipe)
    return c.tmp / "unfinished"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# (id, bad command, words the message must hold, corrected command or None)
CASES: list[tuple[str, Callable[[Ctx], list[str]], tuple[str, ...], Callable[[Ctx], list[str]] | None]] = [
    # -- the model
    ("model-missing", lambda c: c.args(model=str(c.tmp / "no-model")), ("no-model", "does not exist"),
     lambda c: c.args()),
    ("model-no-tokenizer", lambda c: c.args(model=str(c.models["no_tokenizer"])),
     ("no-tokenizer", "has no tokenizer", "save_pretrained"), lambda c: c.args()),
    ("model-no-config", lambda c: c.args(model=str(c.models["no_config"])), ("no-config", "no config.json"),
     lambda c: c.args()),
    ("model-is-a-file", lambda c: c.args(model=str(c.model / "config.json")), ("config.json", "is a file"),
     lambda c: c.args()),
    ("tokenizer-larger-than-embeddings", lambda c: c.args(model=str(c.models["small_vocab"])),
     ("small-vocab", "30,522 tokens", "100 rows"), lambda c: c.args()),
    ("hub-id-offline", lambda c: c.args(model="some-org/some-model"),
     ("'some-org/some-model'", "hub id", "offline"), lambda c: c.args()),
    # -- the budget
    ("budget-zero", lambda c: c.args(budget="0"), ("budget = '0'",), lambda c: c.args()),
    ("budget-ambiguous", lambda c: c.args(budget="0.5"), ("'0.5'", "ambiguous budget"), lambda c: c.args()),
    ("budget-below-smallest-module", lambda c: c.args(budget="3"), ("budget = 3", "below the smallest module"),
     lambda c: c.args()),
    ("budget-above-the-space", lambda c: c.args(budget="90%"), ("budget = '90%'", "holds the whole space"),
     lambda c: c.args()),
    ("budget-text", lambda c: c.args(budget="lots"), ("'lots'",), lambda c: c.args()),
    # -- intervals, epochs, devices, argparse
    ("checkpoint-every-zero", lambda c: c.args() + ["--checkpoint-every", "0"], ("--checkpoint-every 0",),
     lambda c: c.args() + ["--checkpoint-every", "5"]),
    ("epochs-zero", lambda c: c.args(epochs="0"), ("epochs = 0",), lambda c: c.args()),
    ("epochs-not-a-number", lambda c: c.args(epochs="x"), ("--epochs", "'x'"), lambda c: c.args()),
    ("device-without-cuda", lambda c: c.args(device="cuda"), ("--device 'cuda'", "--device cpu"),
     lambda c: c.args(device="cpu")),
    ("device-unknown", lambda c: c.args(device="gpu7"), ("--device 'gpu7'",), lambda c: c.args(device="cpu")),
    # -- the spec
    ("task-unknown", lambda c: c.args(task="nosuchtask"), ("'nosuchtask'", "unknown task"), lambda c: c.args()),
    ("set-unknown-trigger", lambda c: c.args() + ["--set", "search.trigger=nope"], ("unknown trigger 'nope'",),
     lambda c: c.args()),
    ("set-negative-lr", lambda c: c.args() + ["--set", "search.lr=-1"], ("search.lr", "-1"), lambda c: c.args()),
    ("set-without-equals", lambda c: c.args() + ["--set", "search.lr"], ("--set 'search.lr'", "KEY=VALUE"),
     lambda c: c.args()),
    ("spec-missing", lambda c: ["run", "--spec", str(c.tmp / "nope.toml"), "--out", str(c.out)],
     ("nope.toml", "does not exist"), None),
    ("spec-not-toml", lambda c: ["run", "--spec", c.spec("budget = \n"), "--out", str(c.out)],
     ("spec.toml", "not valid TOML"), None),
    ("spec-not-utf8", lambda c: ["run", "--spec", c.spec('budget = "0.1%"\n# caf\xe9\n'.encode("latin-1")),
                                 "--out", str(c.out)], ("spec.toml", "not UTF-8"), None),
    ("spec-unknown-table", lambda c: ["run", "--spec", c.spec('budget = 2000\n[serch]\nepochs = 1\n'),
                                      "--out", str(c.out)], ("'serch'", "unknown table"), None),
    ("spec-warmup-not-below-epochs",
     lambda c: c.args() + ["--set", 'search.trigger={name="budget_stability",warmup_epochs=1}'],
     ("warmup_epochs = 1", "search.epochs = 1"), lambda c: c.args()),
    # -- the data
    ("data-dir-missing", lambda c: c.args(data_dir=str(c.tmp / "no-data")), ("no-data", "does not exist"),
     lambda c: c.args()),
    ("data-dir-without-the-task", lambda c: c.args(data_dir=str(c.tmp)), ("missing folder", "RTE"),
     lambda c: c.args()),
    ("data-unknown-label",
     lambda c: c.args(data_dir=c.data_copy(_replace_in("train.tsv", "\tnot_entailment\n", "\tmaybe\n"))),
     ("'maybe'", "data row"), lambda c: c.args()),
    ("data-empty-file", lambda c: c.args(data_dir=c.data_copy(_write("train.tsv", b""))),
     ("train.tsv", "is empty"), lambda c: c.args()),
    ("data-missing-file", lambda c: c.args(data_dir=c.data_copy(lambda f: (f / "dev.tsv").unlink())),
     ("dev.tsv", "missing file"), lambda c: c.args()),
    ("data-not-utf8", lambda c: c.args(data_dir=c.data_copy(_latin1)), ("train.tsv", "not UTF-8", "line 4"),
     lambda c: c.args()),
    ("data-missing-column", lambda c: c.args(data_dir=c.data_copy(_replace_in("train.tsv", "sentence2", "s2"))),
     ("train.tsv", "no column 'sentence2'"), lambda c: c.args()),
    # -- the run folder
    ("out-is-a-file", lambda c: (c.tmp / "taken.txt").write_text("x") and c.args(out=str(c.tmp / "taken.txt")),
     ("taken.txt", "is a file"), None),
    ("out-under-a-file", lambda c: (c.tmp / "f").write_text("x") and c.args(out=str(c.tmp / "f" / "run")),
     ("f/run'", "cannot write the run folder", "is a file"), None),
    ("out-is-a-foreign-folder", lambda c: (c.out.mkdir(), (c.out / "notes.txt").write_text("mine"))
     and c.args(), ("not a bipeft run folder",), None),
    ("out-holds-a-finished-run", lambda c: c.args(out=str(_copy(c.finished, c.tmp / "done"))),
     ("bipeft run --resume --out", "--overwrite"), lambda c: c.args(out=str(c.tmp / "done")) + ["--overwrite"]),
    ("resume-with-a-flag-that-changes-a-finished-search",
     lambda c: ["run", "--resume", "--out", str(_copy(c.searched, c.tmp / "s")), "--budget", "2500"],
     ("--budget 2500", "[budget]", "the search is finished"),
     lambda c: ["run", "--resume", "--out", str(c.tmp / "s"), "--set", "retrain.epochs=1"]),
    ("resume-and-overwrite", lambda c: ["run", "--resume", "--overwrite", "--out", str(c.finished)],
     ("--resume", "--overwrite"), None),
    # -- search
    ("search-budget-zero", lambda c: c.args("search", budget="0"), ("budget = '0'",), lambda c: c.args("search")),
    ("search-resume-without-out", lambda c: ["search", "--resume"], ("bipeft search --resume --out",), None),
    ("search-resume-not-a-run", lambda c: ["search", "--resume", "--out", str(c.tmp)],
     ("not a bipeft run folder",), None),
    # -- retrain
    ("retrain-not-a-run", lambda c: ["retrain", str(c.tmp)], ("not a bipeft run folder",), None),
    ("retrain-before-the-search", lambda c: ["retrain", str(_unfinished_run(c))],
     ("no finished search", "bipeft search --resume --out"), None),
    ("retrain-bad-device", lambda c: ["retrain", str(c.searched), "--device", "tpu9"], ("--device 'tpu9'",), None),
    # -- export
    ("export-not-a-run", lambda c: ["export", str(c.tmp)], ("not a bipeft run folder",), None),
    ("export-before-the-retrain", lambda c: ["export", str(c.searched)],
     ("no re-trained weights", "bipeft retrain"), None),
    ("export-out-is-a-file",
     lambda c: (c.tmp / "e.txt").write_text("x") and ["export", str(c.finished), "--out", str(c.tmp / "e.txt")],
     ("e.txt", "is a file"), lambda c: ["export", str(c.finished), "--out", str(c.tmp / "e")]),
    ("export-out-taken", lambda c: ((c.tmp / "e").mkdir(), (c.tmp / "e" / "x").write_text("x"))
     and ["export", str(c.finished), "--out", str(c.tmp / "e")], ("--overwrite",),
     lambda c: ["export", str(c.finished), "--out", str(c.tmp / "e"), "--overwrite"]),
    ("export-unknown-format", lambda c: ["export", str(c.finished), "--format", "onnx"], ("'onnx'",), None),
    # -- show
    ("show-missing", lambda c: ["show", str(c.tmp / "nothing")], ("nothing",), None),
    ("show-corrupt-result", lambda c: (c.tmp / "r.json").write_text("{not json") and
     ["show", str(c.tmp / "r.json"), "--no-plots"], ("r.json",), None),
    ("show-not-utf8-result", lambda c: (c.tmp / "r.json").write_bytes(b'{"a": "\xff"}') and
     ["show", str(c.tmp / "r.json"), "--no-plots"], ("r.json",), None),
]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, small_data, tmp_path_factory) -> tuple[Path, Path]:
    """A finished run and a search-only run of the quick command."""
    root = tmp_path_factory.mktemp("runs")
    c = Ctx(tmp=root, model=tiny_model_dir, data=small_data, models={}, finished=root, searched=root)
    assert cli.main(c.args(out=str(root / "finished")) + ["-q"]) == 0
    assert cli.main(c.args("search", out=str(root / "searched")) + ["-q"]) == 0
    return root / "finished", root / "searched"


def _call(args: list[str]) -> int:
    try:
        return cli.main(args)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code or 0)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly_and_the_corrected_command_succeeds(case, tmp_path, tiny_model_dir, small_data,
                                                                   model_variants, runs, capsys):
    _, bad, words, fixed = case
    c = Ctx(tmp=tmp_path, model=tiny_model_dir, data=small_data, models=model_variants, finished=runs[0],
            searched=runs[1])
    args = bad(c)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _call(args) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1 and (lines[0].startswith("bipeft: error: ") or lines[0].startswith("usage")
                                or ": error: " in lines[0]), err
    for word in words:
        assert word in err, (word, err)
    if "--out" in args and args[0] in ("run", "search") and "--resume" not in args:
        out = Path(args[args.index("--out") + 1])
        if out.name == "run":  # a refused run leaves no run folder behind
            assert not (out / "run.json").exists() and (out.name in before or not out.exists())
    if fixed is not None:
        args = fixed(c)
        assert _call(args) == 0, capsys.readouterr().err
        if args[0] in ("run", "search") and "--out" in args:
            info = json.loads((Path(args[args.index("--out") + 1]) / "run.json").read_text())
            assert info["stages"]["search"]["done"]


def test_there_are_at_least_30_cases_across_every_command():
    assert len(CASES) >= 30
    ids = " ".join(c[0] for c in CASES)
    for word in ("search-", "retrain-", "export-", "show-", "spec-", "model-", "data-", "budget-"):
        assert word in ids


def test_an_unwritable_run_folder_is_one_line_naming_the_path(tmp_path, tiny_model_dir, small_data, monkeypatch,
                                                              capsys):
    import errno

    c = Ctx(tmp=tmp_path, model=tiny_model_dir, data=small_data, models={}, finished=tmp_path, searched=tmp_path)
    real_mkdir = Path.mkdir

    def refuse(self, *a, **kw):
        if self == c.out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert cli.main(c.args()) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"cannot write the run folder '{c.out}' (Permission denied)" in err and "--out DIR" in err
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    assert cli.main(c.args()) == 0  # the same command, once the place is writable


@pytest.mark.parametrize("error, words", [
    (PermissionError(13, "Permission denied", "/srv/out/x"), ("'/srv/out/x': Permission denied", "permissions")),
    (OSError(28, "No space left on device", "/srv/out/x"), ("'/srv/out/x'", "the disk is full")),
    (NotADirectoryError(20, "Not a directory", "/srv/file/x"), ("'/srv/file/x'", "is a file, not a folder")),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), ("not UTF-8", "convert it to UTF-8")),
])
def test_any_os_or_decoding_error_at_the_cli_is_one_line(monkeypatch, capsys, error, words):
    def fail(args, printer):
        raise error

    monkeypatch.setattr(cli, "cmd_plugins", fail)
    assert cli.main(["plugins"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("bipeft: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for word in words:
        assert word in err, err
