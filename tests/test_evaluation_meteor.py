"""Tests for densecap_jax.evaluation.meteor: the METEOR 1.5 jar through one Java process."""

import gc
import gzip
import random
import shutil
import stat

import pytest

from densecap_jax.evaluation import meteor as meteor_lib
from densecap_jax.evaluation.meteor import Meteor, MeteorError

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no java on PATH")


@pytest.fixture(scope="module")
def meteor():
  with Meteor() as m:
    yield m


@needs_java
def test_original_sanity_vectors(meteor):
  # test/evaluation_test.lua: partial match in (0, 1), nothing = 0, exact = 1.
  scores = meteor.score(
      ["one words matches", "nothing matches", "expecting perfect match"],
      [["an example ref", "another ref", "and one more"], ["some sentence", "one more for fun"],
       ["expecting perfect match", "garbage sent", "bleh one more"]])
  assert 0.0 < scores[0] < 1.0
  assert scores[1] == 0.0
  assert scores[2] == 1.0


@needs_java
def test_batched_equals_one_by_one(meteor):
  rng = random.Random(0)
  words = "a man red car tree white sky cloud dog sitting on the of building window".split()

  def sentence():
    return " ".join(rng.choices(words, k=rng.randint(1, 6)))

  candidates = [sentence() for _ in range(30)]
  references = [[sentence() for _ in range(rng.randint(1, 3))] for _ in range(30)]
  one_by_one = [meteor.score([c], [r])[0] for c, r in zip(candidates, references)]
  assert meteor.score(candidates, references) == one_by_one
  meteor.batch_size = 7  # five EVAL requests of <= 7 statistics lines
  try:
    assert meteor.score(candidates, references) == one_by_one
  finally:
    meteor.batch_size = 1000
  assert len(set(one_by_one)) > 5  # the pairs exercise varied scores


@needs_java
def test_protocol_breaking_text_is_sanitised(meteor):
  scores = meteor.score(
      ["expecting ||| perfect\nmatch", "perfect match here", "nothing matches", "a b", "x"],
      [["expecting perfect match"], ["perfect ||| match\nhere"], ["some sentence"], [],
       ["x"]])
  # 'expecting  perfect match' after removal, then '  ' -> ' ': an exact match.
  # The reference becomes 'perfect  match here', the same tokens. The pairs
  # after them are still aligned with their replies.
  assert scores == [1.0, 1.0, 0.0, 0.0, 1.0]


@needs_java
def test_mismatched_lengths_and_bad_references(meteor):
  with pytest.raises(ValueError, match="2 candidates but 1 reference lists"):
    meteor.score(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match=r"references\[0\] must be a list of str"):
    meteor.score(["a"], ["a"])
  assert meteor.score([], []) == []


def test_score_request_follows_the_bridge():
  # eval/meteor_bridge.py: 'SCORE ||| ref1 ||| ... ||| refn ||| hyp'.
  assert (meteor_lib.score_request("a dog", ["a cat", "one dog"])
          == "SCORE ||| a cat ||| one dog ||| a dog")
  assert meteor_lib.score_request("a dog", []) == "SCORE |||  ||| a dog"
  # One pass of '  ' -> ' ' (hypothesis.replace('  ', ' ')): four spaces are
  # two pairs and become two spaces.
  assert meteor_lib.sanitize_candidate("a    b") == "a  b"
  # 'a ||| b\r\nc' -> 'a ||| b  c' -> 'a  b  c' -> 'a b c'.
  assert meteor_lib.sanitize_candidate("a ||| b\r\nc") == "a b c"
  assert meteor_lib.sanitize_reference("a ||| b\nc") == "a  b c"


def test_default_jar_ships_with_pycocoevalcap():
  jar = meteor_lib.default_jar_path()
  assert jar.name == "meteor-1.5.jar" and jar.is_file()
  assert (jar.parent / "data" / "paraphrase-en.gz").is_file()


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))
  with pytest.raises(MeteorError, match="no 'java' executable is on PATH"):
    Meteor()


def test_missing_jar_is_a_clear_error(tmp_path):
  with pytest.raises(MeteorError, match="METEOR jar not found"):
    Meteor(jar_path=tmp_path / "meteor-1.5.jar")
  (tmp_path / "meteor-1.5.jar").write_bytes(b"")
  with pytest.raises(MeteorError, match="paraphrase table not found"):
    Meteor(jar_path=tmp_path / "meteor-1.5.jar")


def test_check_available_names_a_broken_java(tmp_path, monkeypatch):
  jar = _fake_meteor(tmp_path, monkeypatch, "exit 0")
  assert meteor_lib.check_available(jar) == (shutil.which("java"), jar)
  (tmp_path / "bin" / "java").write_text("#!/bin/sh\nexit 1\n")
  with pytest.raises(MeteorError, match="-version failed"):
    meteor_lib.check_available(jar)
  monkeypatch.setenv("PATH", str(tmp_path))
  with pytest.raises(MeteorError, match="no 'java' executable is on PATH"):
    meteor_lib.check_available()


def _fake_meteor(tmp_path, monkeypatch, script):
  """A jar directory and a fake ``java`` on PATH that runs ``script`` (sh)."""
  (tmp_path / "data").mkdir()
  with gzip.open(tmp_path / "data" / "paraphrase-en.gz", "wb"):
    pass
  (tmp_path / "meteor-1.5.jar").write_bytes(b"")
  java = tmp_path / "bin" / "java"
  java.parent.mkdir()
  java.write_text('#!/bin/sh\n[ "$1" = -version ] && exit 0\n' + script + "\n")
  java.chmod(java.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{java.parent}:/usr/bin:/bin")
  return tmp_path / "meteor-1.5.jar"


def test_close_ends_the_process_and_blocks_further_use(tmp_path, monkeypatch):
  jar = _fake_meteor(tmp_path, monkeypatch, "exec cat > /dev/null")
  with Meteor(jar_path=jar) as m:
    process = m._process
    assert process.poll() is None
  assert process.returncode == 0  # exited on its own when stdin closed
  assert m.closed
  with pytest.raises(MeteorError, match="closed"):
    m.score(["a"], [["a"]])
  m.close()  # idempotent


def test_process_is_killed_when_it_ignores_stdin(tmp_path, monkeypatch):
  jar = _fake_meteor(tmp_path, monkeypatch, "exec sleep 60")
  m = Meteor(jar_path=jar, shutdown_timeout=0.2)
  process = m._process
  m.close()
  assert process.returncode == -9


def test_garbage_collection_shuts_the_process_down(tmp_path, monkeypatch):
  jar = _fake_meteor(tmp_path, monkeypatch, "exec cat > /dev/null")
  m = Meteor(jar_path=jar)
  process = m._process
  del m
  gc.collect()
  assert process.returncode == 0


def test_dead_process_is_reported_with_its_stderr(tmp_path, monkeypatch):
  jar = _fake_meteor(tmp_path, monkeypatch, "echo 'Error: Unable to access jarfile' >&2; exit 1")
  m = Meteor(jar_path=jar)
  with pytest.raises(MeteorError, match="ended unexpectedly.*Unable to access jarfile"):
    m.score(["a"], [["a"]])
  assert m.closed


def test_error_reply_is_reported(tmp_path, monkeypatch):
  jar = _fake_meteor(tmp_path, monkeypatch,
                     "read line; echo 'Error: specify hypothesis and at least one reference'; "
                     "exec cat > /dev/null")
  with Meteor(jar_path=jar) as m:
    with pytest.raises(MeteorError, match="specify hypothesis"):
      m.score(["a"], [["a"]])


def test_subprocess_command_is_the_bridge_command(tmp_path, monkeypatch):
  jar = _fake_meteor(tmp_path, monkeypatch, 'echo "$@" > args.txt; exec cat > /dev/null')
  with Meteor(jar_path=jar):
    pass
  args = (tmp_path / "args.txt").read_text().split()
  # args.txt was written in the jar's directory: the process runs there.
  assert args == ["-jar", "-Xmx2G", str(jar.resolve()), "-", "-", "-stdio", "-l", "en", "-norm"]
