# Test-only: on one machine's PYTHONPATH it makes that machine's msrun workers reach their first
# step late, as data staging or a slow compile would, without changing the command line:
# MAECONV_TEST_LATE_S seconds are slept right after mindspore.communication.init() returns.
import os

_late = float(os.environ.get("MAECONV_TEST_LATE_S", "0") or 0)
if _late and os.environ.get("MS_ROLE") == "MS_WORKER":
    import sys
    import time

    import mindspore.communication as _communication

    _init = _communication.init

    def init(*args, **kwargs):
        _init(*args, **kwargs)
        print(f"[test] worker RANK_ID={os.environ.get('RANK_ID')}: {_late:.0f} s late after init", file=sys.stderr,
              flush=True)
        time.sleep(_late)

    _communication.init = init
