"""What a ClientApp process spends before its first training step."""

import subprocess
import sys
import time

from fedmask.client import startup


def test_a_fresh_process_reports_its_age_once():
    code = ("import time; t = time.monotonic(); time.sleep(0.5); "
            "from fedmask.client.startup import first_step_s; "
            "print(first_step_s(), time.monotonic() - t, first_step_s())")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    whole = time.monotonic() - start
    age, slept, again = float(out[0]), float(out[1]), out[2]
    assert slept - 0.02 <= age <= whole + 0.02  # at least its own sleep, at most its life
    assert again == "None"


def test_the_age_grows_with_the_process():
    first = startup.process_age_s()
    time.sleep(0.2)
    assert first is not None and startup.process_age_s() >= first + 0.18
