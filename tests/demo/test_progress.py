"""The demo's thread choice, one-line progress off a terminal, and its expected-time line."""

from qvgen.progress import Ticker, auto_threads


def test_auto_threads_leaves_busy_cores_alone():
    assert auto_threads(2, 0.0) == 2
    assert auto_threads(2, 1.0) == 1 and auto_threads(2, 6.0) == 1  # never 0
    assert auto_threads(64, 0.0) == 4  # the tiny model gains little beyond a few threads


def test_ticker_lines_and_expected_time():
    now = [0.0]
    lines = []
    t = Ticker(lines.append, total_steps=20, every_s=30, calibrate=5, other_fraction=0.0, tty=False,
               clock=lambda: now[0])
    data = t.wrap(lambda step, gen: (step, gen), "LSQ QAT", 10)
    for step in range(10):
        assert data(step, None) == (step, None)
        now[0] += 10.0  # 10 s per step
    expected = [ln for ln in lines if "expected time" in ln]
    assert len(expected) == 1 and "about 3.3 min in all" in expected[0]  # 50 s so far + 15 steps x 10 s
    progress = [ln for ln in lines if "step " in ln and "expected" not in ln]
    assert len(progress) == 3 and progress[0].startswith("[demo] LSQ QAT: step 3/10; training 3/20 steps")
    quiet = []
    tty = Ticker(quiet.append, total_steps=4, calibrate=100, tty=True, clock=lambda: now[0])
    for step in range(4):
        tty.tick("QVGen", step, 4)
        now[0] += 100.0
    assert quiet == [] and tty.done == 4  # a terminal gets the trainer's bars instead
    assert data.__class__.__name__ == "_Ticking" and not hasattr(data, "global_batch")
