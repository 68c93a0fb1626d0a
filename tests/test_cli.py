"""The higgs-tokenizer command, run in-process (and once as the installed console script)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from helpers import REPO, fixture_dir

from higgs_tokenizer.cli import main
from higgs_tokenizer.codes_file import load_codes


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    monkeypatch.setenv("HIGGS_TOKENIZER_MODEL", str(fixture_dir("tiny-24k")))


@pytest.fixture
def tree(tmp_path, short_recordings):
    """A folder mixing good files (several rates, stereo, FLAC/OGG/MP3) and bad ones."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(short_recordings["en_man.wav"], root / "en_man.wav")
    shutil.copy(short_recordings["old_man.wav"], root / "sub" / "old_man.wav")
    data, rate = sf.read(short_recordings["mabel.wav"])
    sf.write(root / "sub" / "mabel.flac", data, rate)
    sf.write(root / "mabel.ogg", data, rate, format="OGG", subtype="VORBIS")
    sf.write(root / "mabel.mp3", data, rate, format="MP3", subtype="MPEG_LAYER_III")
    (root / "sub" / "empty.wav").write_bytes(b"")
    (root / "notes.wav").write_text("not audio\n" * 50)
    (root / "broken.flac").write_bytes(short_recordings["en_man.wav"].read_bytes()[:40])
    (root / "readme.txt").write_text("ignored: not an audio extension")
    return root


GOOD = ["en_man", "mabel", "mabel", "sub/mabel", "sub/old_man"]


def test_encode_a_mixed_folder(tree, tmp_path, capsys):
    out = tmp_path / "codes"
    code = main(["encode", str(tree), str(tmp_path / "missing.wav"), "-o", str(out), "--batch-size", "3"])
    err = capsys.readouterr().err
    assert code == 1
    # Every good file is done, the tree is mirrored (mabel.ogg and mabel.mp3 collide on mabel.hac).
    done = sorted(str(p.relative_to(out).with_suffix("")) for p in out.rglob("*.hac"))
    assert done == ["en_man", "mabel", "sub/mabel", "sub/old_man"]
    assert re.search(r"mabel\.(ogg|mp3): its output .*mabel\.hac is already produced from", err)
    assert "empty.wav: empty file (0 bytes)" in err
    assert "notes.wav: not a readable audio file" in err
    assert "broken.flac: not a readable audio file" in err
    assert "missing.wav: no such file or directory" in err
    assert "encoded 4 file(s)" in err and "5 FAILED" in err
    for path in out.rglob("*.hac"):
        assert load_codes(path).codes.shape[0] == 8


def test_existing_outputs(tree, tmp_path, capsys):
    out = tmp_path / "codes"
    args = ["encode", str(tree / "en_man.wav"), "-o", str(out), "-q"]
    assert main(args) == 0
    stamp = (out / "en_man.hac").stat().st_mtime_ns
    assert main(args) == 1 and "exists (use --overwrite or --skip-existing)" in capsys.readouterr().err
    assert main(args + ["--skip-existing"]) == 0
    assert (out / "en_man.hac").stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0
    assert (out / "en_man.hac").stat().st_mtime_ns != stamp


def test_unwritable_output(tree, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    assert main(["encode", str(tree / "en_man.wav"), "-o", str(blocker / "codes"), "-q"]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_glob_and_decode_restore_lengths(tree, tmp_path, capsys):
    codes = tmp_path / "codes"
    assert main(["encode", str(tree / "sub" / "*.*"), "-o", str(codes), "-q"]) == 1  # sub/empty.wav fails
    assert sorted(p.name for p in codes.iterdir()) == ["mabel.hac", "old_man.hac"]
    decoded = tmp_path / "decoded"
    assert main(["decode", str(codes), "-o", str(decoded), "--format", "flac"]) == 0
    for name, source in (("mabel", tree / "sub" / "mabel.flac"), ("old_man", tree / "sub" / "old_man.wav")):
        info = sf.info(decoded / f"{name}.flac")
        original = sf.info(source)
        assert info.samplerate == 24000
        assert info.frames == round(original.frames * 24000 / original.samplerate)
    (codes / "junk.hac").write_bytes(b"junk")
    assert main(["decode", str(codes / "junk.hac"), "-o", str(decoded), "-q"]) == 1
    assert "junk.hac: not a codes file" in capsys.readouterr().err


def test_roundtrip_and_info(tree, tmp_path, capsys):
    assert main(["roundtrip", str(tree / "sub" / "old_man.wav"), "-o", str(tmp_path / "rt.wav")]) == 0
    out = capsys.readouterr().out
    for field in ("1.50 s at 24000 Hz", "38 frames x 8 codebooks at 25 frames/s = 2 kbps", "real-time factor"):
        assert field in out
    assert sf.info(tmp_path / "rt.wav").frames == 36000
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "transformers format" in out and "8 x 1024" in out and "25 frames/s" in out and "2 kbps (8 codebooks)" in out


def test_model_that_cannot_load(tree, tmp_path, capsys):
    code = main(["encode", str(tree / "en_man.wav"), "-o", str(tmp_path), "--model", str(tmp_path / "nowhere" / "x")])
    assert code == 2 and "error: no checkpoint directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["encode", "decode", "roundtrip", "info", "convert"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example" in capsys.readouterr().out


def test_convert(tmp_path):
    from higgs_tokenizer import HiggsAudioV2TokenizerModel, save_original

    save_original(HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-16k")), tmp_path / "orig")
    assert main(["convert", str(tmp_path / "orig"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "higgs-tokenizer"
    out = subprocess.run([str(script), "info"], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert "8 x 1024" in out.stdout


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("higgs-tokenizer ")]


def test_readme_command_line_examples_run(tmp_path, monkeypatch, short_recordings):
    commands = readme_commands()
    assert len(commands) >= 5
    (tmp_path / "recordings" / "sub").mkdir(parents=True)
    (tmp_path / "more").mkdir()
    shutil.copy(short_recordings["en_man.wav"], tmp_path / "speech.wav")
    shutil.copy(short_recordings["belinda.wav"], tmp_path / "recordings" / "belinda.wav")
    shutil.copy(short_recordings["old_man.wav"], tmp_path / "recordings" / "sub" / "old_man.wav")
    data, rate = sf.read(short_recordings["mabel.wav"])
    sf.write(tmp_path / "more" / "mabel.flac", data, rate)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main(argv) == 0, command
    assert (tmp_path / "speech.roundtrip.wav").is_file()
    assert len(list((tmp_path / "decoded").rglob("*.flac"))) == 4


def test_one_file_to_one_named_file(tmp_path, short_recordings, capsys):
    """With one input file, `-o` with the output's extension is that file, not a directory."""
    codes = tmp_path / "a.hac"
    assert main(["encode", str(short_recordings["en_man.wav"]), "-o", str(codes), "-q"]) == 0
    assert codes.is_file() and load_codes(codes).num_frames > 0
    audio = tmp_path / "a.flac"
    assert main(["decode", str(codes), "-o", str(audio), "-q"]) == 0
    assert audio.is_file() and sf.info(str(audio)).samplerate == 24000
    assert main(["encode", str(short_recordings["en_man.wav"]), "-o", str(codes), "-q"]) == 1  # exists
    assert "exists (use --overwrite or --skip-existing)" in capsys.readouterr().err


def test_length_rule_option_is_recorded(tmp_path, short_recordings):
    for rule in ("original", "transformers"):
        out = tmp_path / f"{rule}.hac"
        assert main(["encode", str(short_recordings["en_man.wav"]), "-o", str(out), "-q", "--length-rule", rule]) == 0
        assert load_codes(out).length_rule == rule


def test_arguments_are_checked_before_any_work(tmp_path, short_recordings, capsys):
    code = main(["encode", str(short_recordings["en_man.wav"]), "-o", str(tmp_path / "out"), "--bandwidth", "3"])
    assert code == 2 and "doesn't support the bandwidth 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = main(["roundtrip", str(short_recordings["en_man.wav"]), "-o", str(tmp_path / "x.mp3")])
    assert code == 2 and "must be a .wav or .flac file" in capsys.readouterr().err


def test_roundtrip_reports_the_input_rate_and_keeps_outputs(tmp_path, short_recordings, capsys):
    out = tmp_path / "rt.wav"
    assert main(["roundtrip", str(short_recordings["belinda.wav"]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    rate = sf.info(str(short_recordings["belinda.wav"])).samplerate
    assert f"1.50 s at {rate} Hz, resampled to 24000 Hz" in printed and "at 24000 Hz" in printed.splitlines()[-1]
    assert main(["roundtrip", str(short_recordings["belinda.wav"]), "-o", str(out), "-q"]) == 2
    assert "exists (use --overwrite)" in capsys.readouterr().err
    assert main(["roundtrip", str(short_recordings["belinda.wav"]), "-o", str(out), "-q", "--overwrite"]) == 0
    assert capsys.readouterr().out == ""


def test_convert_refuses_to_write_over_its_source(tmp_path, capsys):
    from higgs_tokenizer import save_original

    from helpers import load_model

    save_original(load_model("tiny-24k"), tmp_path / "orig")
    before = (tmp_path / "orig" / "config.json").read_bytes()
    assert main(["convert", str(tmp_path / "orig"), str(tmp_path / "orig" / ".." / "orig")]) == 2
    assert "is the source checkpoint" in capsys.readouterr().err
    assert (tmp_path / "orig" / "config.json").read_bytes() == before


def test_an_empty_corpus_stops_the_command(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main(["tokenize-dataset", str(tmp_path / "nothing"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "tokenize-dataset: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
