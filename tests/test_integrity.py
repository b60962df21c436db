"""Integrity that says what it is (issue #25, part 4): counts files without digests are refused; deleted,
reordered and appended rows are detected through the completion record; an incomplete file certifies with a
warning; digests are plain SHA-256 (a forger who recomputes them passes: accident-evident only) unless a secret
key file is named in $CERTIFYNET_KEY_FILE (HMAC-SHA-256: the same forgery is refused)."""
from __future__ import annotations

import json
import os
import warnings

import pytest

from certifynet.certify.from_counts import certify_row
from certifynet.cli import certify, merge, sample
from certifynet.errors import CertifyNetError, CertifyNetWarning
from certifynet.records import KEY_ENV, Digester, RowLog, read_counts, read_rows
from certifynet.records.integrity import completion_record, row_check, settings_integrity

from helpers import untrained_lenet

SMALL = ["--sigma", "0.25", "--N0", "10", "--N", "60", "--batch", "30", "--max", "6", "--no-progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return untrained_lenet(tmp_path_factory.mktemp("m") / "lenet.pth")


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "certifynet.key"
    path.write_bytes(bytes(range(7, 39)))  # 32 bytes: a test key, not a secret
    return str(path)


def _sample(model, out, *extra, key=None):
    env = {KEY_ENV: key} if key else {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        if not key:
            mp.delenv(KEY_ENV, raising=False)
        assert sample.main(["--model", model, *SMALL, *extra, "--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def plain(model, tmp_path_factory):
    """(data text, sidecar dict) of a genuine unkeyed NP counts file of 6 rows."""
    out = _sample(model, str(tmp_path_factory.mktemp("plain") / "c.csv"))
    return open(out).read(), json.load(open(out + ".meta.json"))


@pytest.fixture(scope="module")
def keyed(model, key_file, tmp_path_factory):
    out = _sample(model, str(tmp_path_factory.mktemp("keyed") / "c.csv"), key=key_file)
    return open(out).read(), json.load(open(out + ".meta.json"))


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def _write(folder, body, meta, name="t.csv"):
    path = os.path.join(str(folder), name)
    with open(path, "w") as f:
        f.write(body)
    with open(path + ".meta.json", "w") as f:
        json.dump(meta, f)
    return path


def _lines(body):
    return body.splitlines()


def _join(lines):
    return "\n".join(lines) + "\n"


def _refused(path, fragment):
    with pytest.raises(CertifyNetError, match=fragment):
        read_counts(path)


def _reads_cleanly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CertifyNetWarning)
        return read_counts(path)


# ---------------------------------------------------------------- what a genuine file carries
def test_a_completed_run_records_its_rows(plain, keyed, tmp_path):
    body, meta = plain
    assert meta["integrity"]["scheme"] == "sha256" and "key_id" not in meta["integrity"]
    assert meta["complete"]["rows"] == 6 == len(_lines(body)) - 1
    _reads_cleanly(_write(tmp_path, body, meta))
    body_k, meta_k = keyed
    assert meta_k["integrity"]["scheme"] == "hmac-sha256" and len(meta_k["integrity"]["key_id"]) == 16
    strip = lambda text: [line.split(",")[:-2] for line in _lines(text)]  # noqa: E731 (time and check differ)
    assert strip(body_k) == strip(body)  # the same counts; only the digests differ
    assert meta_k["integrity"]["sha256"] != meta["integrity"]["sha256"]


# ---------------------------------------------------------------- rows deleted, reordered, appended
def test_a_deleted_row_is_detected(plain, tmp_path):
    """Cherry-picking: dropping a row (e.g. one whose prediction is wrong) no longer passes."""
    body, meta = plain
    lines = _lines(body)
    _refused(_write(tmp_path, _join(lines[:3] + lines[4:]), meta), "has 5 rows, but its run completed with 6: rows "
                                                                   "were deleted")


def test_a_reordered_row_is_detected(plain, tmp_path):
    body, meta = plain
    lines = _lines(body)
    _refused(_write(tmp_path, _join([lines[0], lines[2], lines[1], *lines[3:]]), meta), "reordered or replaced")


def test_a_row_appended_from_another_shard_is_detected(model, tmp_path):
    """A row of shard 1/2 carries a valid check (the shards share their settings): appending it to shard 0/2
    is caught by shard 0's completion record."""
    a = _sample(model, str(tmp_path / "s.csv"), "--shard", "0/2")
    b = _sample(model, str(tmp_path / "s.csv"), "--shard", "1/2")
    a, b = a.replace(".csv", ".shard0of2.csv"), b.replace(".csv", ".shard1of2.csv")
    with open(a, "a") as f:
        f.write(_lines(open(b).read())[1] + "\n")
    _refused(a, "has 4 rows, but its run completed with 3: rows were appended")


# ---------------------------------------------------------------- no digests, no certificate
def test_stripped_digests_are_refused(plain, tmp_path, capsys):
    """Deleting the sidecar's integrity entry and the check column no longer passes as 'written before digests'."""
    body, meta = plain
    lines = [line.rsplit(",", 1)[0] for line in _lines(body)]
    stripped = {k: v for k, v in meta.items() if k not in ("integrity", "complete")}
    stripped["columns"] = [c for c in meta["columns"] if c != "check"]
    path = _write(tmp_path, _join(lines), stripped)
    _refused(path, "lacks the digest its rows are checked against")
    assert certify.main(["--counts", path, "--out", str(tmp_path / "log.tsv"), "--no-progress"]) == 2
    assert "error: " in capsys.readouterr().err and not os.path.exists(tmp_path / "log.tsv")


# ---------------------------------------------------------------- forgery: evident only with a key
def _forge(body, meta, digester):
    """σ × 10 in the sidecar, with every digest recomputed by `digester` (all a forger can do)."""
    meta = {**{k: v for k, v in meta.items() if k not in ("integrity", "complete")}, "sigma": meta["sigma"] * 10}
    meta["integrity"] = settings_integrity(meta, digester)
    lines = _lines(body)
    rows = [line.split(",")[:-1] for line in lines[1:]]
    checks = [row_check(meta["integrity"]["sha256"], r, digester) for r in rows]
    meta["complete"] = completion_record(meta, checks, digester)
    return _join([lines[0]] + [",".join([*r, c]) for r, c in zip(rows, checks)]), meta


def test_a_forger_who_recomputes_the_digests_passes_without_a_key(plain, tmp_path):
    """The documented limit of the default (accident-evident): a recomputed SHA-256 cannot be told apart."""
    body, meta = plain
    forged_meta = _forge(body, meta, Digester())[1]
    path = _write(tmp_path, *_forge(body, meta, Digester()))
    got, _, rows = _reads_cleanly(path)
    assert got["sigma"] == forged_meta["sigma"] == 2.5


def test_the_same_forgery_is_refused_with_a_key(keyed, key_file, tmp_path, monkeypatch):
    body, meta = keyed
    monkeypatch.setenv(KEY_ENV, key_file)
    _reads_cleanly(_write(tmp_path, body, meta, "genuine.csv"))
    # the forger does not hold the key: recomputing without one (a downgrade) or with a key of their own
    _refused(_write(tmp_path, *_forge(body, meta, Digester()), "plain.csv"), "written without a secret key")
    own = _forge(body, meta, Digester(b"the forger's own key, 32 bytes.."))
    _refused(_write(tmp_path, *own, "own.csv"), "written with another key")
    own[1]["integrity"]["key_id"] = meta["integrity"]["key_id"]  # and claiming the right key's id
    _refused(_write(tmp_path, *own, "claimed.csv"), "was edited after the run: field")
    # editing one count, with or without recomputing its check, is refused as well
    lines = _lines(body)
    cols = lines[0].split(",")
    row = lines[1].split(",")
    row[cols.index("count")] = str(int(row[cols.index("count")]) - 1)
    edited = _join([lines[0], ",".join(row), *lines[2:]])
    _refused(_write(tmp_path, edited, meta, "edited.csv"), "was edited after sampling")


def test_a_keyed_file_needs_the_key(keyed, tmp_path):
    path = _write(tmp_path, *keyed)
    _refused(path, rf"written with a secret key \(key id {keyed[1]['integrity']['key_id']}\): set \${KEY_ENV}")


def test_unkeyed_files_are_refused_while_a_key_is_set(plain, key_file, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, key_file)
    _refused(_write(tmp_path, *plain), "written without a secret key")


@pytest.mark.parametrize("content, fragment", [(b"short", "holds 5 bytes; use at least 16"),
                                               (None, "cannot be read")])
def test_a_bad_key_file_is_refused_before_any_file_is_written(model, tmp_path, monkeypatch, capsys, content,
                                                              fragment):
    key = tmp_path / "k"
    if content is not None:
        key.write_bytes(content)
    monkeypatch.setenv(KEY_ENV, str(key))
    out = tmp_path / "c.csv"
    assert sample.main(["--model", model, *SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and fragment in err[-1], err
    assert not os.path.exists(out) and not os.path.exists(str(out) + ".meta.json")


def test_resuming_with_another_key_is_refused(plain, key_file, tmp_path, monkeypatch):
    body, meta = plain
    path = _write(tmp_path, _join(_lines(body)[:3]), {k: v for k, v in meta.items() if k != "complete"})
    monkeypatch.setenv(KEY_ENV, key_file)
    fresh = {k: v for k, v in meta.items() if k not in ("integrity", "complete", "columns", "created", "version")}
    with pytest.raises(CertifyNetError, match="was written without a key, this run would write with the key"):
        RowLog(path, meta["columns"][:-1], fresh, sep=",", integrity=True)


# ---------------------------------------------------------------- incomplete files: a warning that says so
def _fresh_meta(meta):
    return {k: v for k, v in meta.items() if k not in ("integrity", "complete", "columns", "created", "version")}


def test_an_interrupted_run_certifies_with_a_warning_until_resumed(plain, tmp_path, capsys):
    body, meta = plain
    cols = meta["columns"][:-1]
    rows = [dict(zip(meta["columns"], line.split(","))) for line in _lines(body)[1:]]
    path = str(tmp_path / "c.csv")
    with pytest.raises(KeyboardInterrupt), RowLog(path, cols, _fresh_meta(meta), sep=",", integrity=True) as log:
        for r in rows[:2]:
            log.write(r)
        raise KeyboardInterrupt
    assert "complete" not in json.load(open(path + ".meta.json"))
    with pytest.warns(CertifyNetWarning, match="is incomplete: it has no completion record .* only its 2 rows"):
        read_counts(path)
    capsys.readouterr()
    assert certify.main(["--counts", path, "--out", str(tmp_path / "log.tsv"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "is incomplete" in err, err
    with RowLog(path, cols, _fresh_meta(meta), sep=",", integrity=True) as log:  # resumed: the rest
        for r in rows[2:]:
            log.write(r)
    _reads_cleanly(path)
    assert read_rows(path)[1] == rows


def test_appending_to_a_completed_file_removes_its_record_first(plain, tmp_path):
    """A rerun that adds rows (e.g. a larger --end) drops the record before its first row, so an interruption
    leaves an incomplete file (a warning), not one whose record disagrees with it (an error)."""
    body, meta = plain
    path = _write(tmp_path, body, meta)
    log = RowLog(path, meta["columns"][:-1], _fresh_meta(meta), sep=",", integrity=True)
    row = dict(zip(meta["columns"], _lines(body)[1].split(",")), idx="99")
    log.write(row)
    assert "complete" not in json.load(open(path + ".meta.json"))
    log.close(failed=True)
    with pytest.warns(CertifyNetWarning, match="is incomplete"):
        read_counts(path)


def test_a_legacy_digest_without_scheme_still_verifies(plain, tmp_path):
    """Files written before keys (integrity without 'scheme', no completion record): checked as SHA-256, and
    read with the incomplete-file warning."""
    body, meta = plain
    legacy = {k: v for k, v in meta.items() if k != "complete"}
    legacy["integrity"] = {k: v for k, v in meta["integrity"].items() if k != "scheme"}
    with pytest.warns(CertifyNetWarning, match="no completion record"):
        read_counts(_write(tmp_path, body, legacy))


# ---------------------------------------------------------------- shards and their merge
def test_shards_warn_and_their_merge_gets_its_own_record(model, tmp_path, capsys):
    base = str(tmp_path / "m.csv")
    for i in range(2):
        _sample(model, base, "--shard", f"{i}/2")
    shard0 = base.replace(".csv", ".shard0of2.csv")
    with pytest.warns(CertifyNetWarning, match=r"is shard 0/2 of its run: certificates cover only its 3 rows"):
        read_counts(shard0)
    assert merge.main([str(tmp_path / "all.csv"), base.replace(".csv", ".shard*of2.csv")]) == 0
    meta, _, rows = _reads_cleanly(str(tmp_path / "all.csv"))
    assert meta["complete"]["rows"] == len(rows) == 6
    # a shard whose row was deleted (record and all) is refused by the merge, not blessed by a new record
    lines = _lines(open(shard0).read())
    with open(shard0, "w") as f:
        f.write(_join(lines[:-1]))
    assert merge.main([str(tmp_path / "again.csv"), base.replace(".csv", ".shard*of2.csv")]) == 2
    assert "rows were deleted" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "again.csv")


def test_certificates_of_a_forged_sigma_scale_with_it(plain, tmp_path):
    """Why the forgery matters: with σ × 10 every NP radius is × 10."""
    body, meta = plain
    fmeta = _forge(body, meta, Digester())[1]
    row = {"idx": "0", "label": "1", "pred": "1", "n0": "10", "n": "60", "count": "60"}
    r1, r10 = (certify_row(row, m, "np", 0.001)["radius"] for m in (meta, fmeta))
    assert r10 == pytest.approx(10 * r1) and r1 > 0
