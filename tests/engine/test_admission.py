"""The one admission policy: `parallel` decoding plus `max_queue` waiting, then a 429 with Retry-After."""

from __future__ import annotations

import pytest

from server.engine.admission import Admission
from server.errors import OverloadedError
from tests.fakes import fake_spec


def test_a_model_takes_parallel_plus_max_queue_then_refuses():
    admission = Admission.of(fake_spec("m").model_copy(update={"parallel": 2, "max_queue": 3}))
    for in_use in range(5):
        admission.check(in_use)
    with pytest.raises(OverloadedError) as caught:
        admission.check(5)
    assert caught.value.status_code == 429 and caught.value.headers() == {"Retry-After": "1"}
