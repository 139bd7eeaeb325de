"""Every input the fuzzer ever crashed on (tests/fuzz/regressions/) is read
again: a clean error or a volume, never a crash."""
import os
import sp

REG = os.path.join(sp.ROOT, "tests", "fuzz", "regressions")


def test_fuzz_regressions(tmp):
    files = sorted(f for f in os.listdir(REG) if not f.startswith("."))
    assert len(files) >= 5
    for f in files:
        try:
            sp.read_volume(os.path.join(REG, f))
            ok = True
        except RuntimeError as e:
            assert str(e)   # a readable message
            ok = False
        if f.startswith("crafted-"):   # hand-made malformed files: must be refused
            assert not ok, f
    # the CLI on each of them: exit 0 or 3, never a signal
    for f in files:
        r = sp.run("passport", "--ct", os.path.join(REG, f), "--labels", os.path.join(REG, f), "-q")
        assert r.returncode in (0, 3), (f, r.returncode, r.stderr)
