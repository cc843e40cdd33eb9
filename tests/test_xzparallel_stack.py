"""The daemon's xz downloads with blocks decoded in the pool.

The faults that cross the thread boundary of the parallel decoder (a resume, a re-download
checked against the file, a corrupt byte, a full disk) are tests/test_faults.py's, run with
both compressions (`BOTH_COMPRESSIONS`).
"""

import pytest
import pytest_twisted

from talos_twisted import decompress

from .conftest import MiB
from .test_faults import EMPTY_ID, idle_xz_pool

XZ = dict(image_size=32 * MiB, compression="xz")


@pytest.mark.stack(**XZ)
@pytest_twisted.ensureDeferred
async def test_xz_miss_is_the_image_and_is_decoded_in_the_pool(stack, monkeypatch):
    decoders = []
    real = decompress.make_decoder

    def spy(*args, **kwargs):
        decoders.append(real(*args, **kwargs))
        return decoders[-1]

    monkeypatch.setattr("talos_twisted.download.make_decoder", spy)
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 200 and body == stack.expected(EMPTY_ID)
    [dec] = decoders
    assert not dec.sequential and dec.blocks_remembered > dec.blocks_decoded > 0
    idle_xz_pool(stack)
