"""schemathesis hooks for tests/integration/schemathesis.rs (loaded through
`hooks` in schemathesis.toml beside this file).

They only keep the run short; they never change what is checked:

- `wait=` may be up to 3600 s, and a wait on a start-later job that nobody
  starts (a submit with `start_later=true&wait=`, or a result) lasts all of
  it. A valid wait above MAX_WAIT is sent as MAX_WAIT, which is just as
  valid, so the checks judge the answer the same way.
- `GET /events` never ends: schemathesis reads a stream until its request
  timeout (10 s by default), so the stream is read for STREAM_SECS only.
"""

import schemathesis

# The longest `wait=` a request of this run makes, in seconds.
MAX_WAIT = 0.2
# How long an event stream is read (its headers must come within it too,
# so it leaves room for a loaded machine).
STREAM_SECS = 1.0


def _seconds(value):
    """The number a valid `wait` value stands for, else None (a negative
    test's invalid value is sent as it is)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if 0 <= number <= 3600 else None


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query
    if isinstance(query, dict) and "wait" in query:
        wait = _seconds(query["wait"])
        if wait is not None and wait > MAX_WAIT:
            query["wait"] = MAX_WAIT
    if case.operation.path == "/events":
        kwargs["timeout"] = STREAM_SECS
