"""The hit path: a GET or HEAD of an image URL that is cached, answered without Klein.

For a small Range request on a cached image, Klein's routing, the route's coroutine and
its Deferreds cost more than the answer itself (bench/run B6). `HitPath` sits in front of
the Klein app and offers every GET and HEAD to a synchronous `answer` first (in
`talos_twisted.web`), which declines — the app then routes it as usual — unless the request
target was parsed before as an image request, its resolution is still fresh and the image
is cached. What is answered is the same, byte for byte, header for header.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

__all__ = ["HitPath", "TargetMemo"]

T = TypeVar("T")
_MEMO_SIZE = 4096  # targets remembered; the memo is dropped whole when it fills


class TargetMemo(Generic[T]):
    """What request targets (path and query, as received) parsed into, under one
    configuration: a reloaded configuration (other platforms, say) forgets them all."""

    def __init__(self, size: int = _MEMO_SIZE):
        self._size = size
        self._config: object = None
        self._memo: dict[bytes, T] = {}

    def get(self, target: bytes, config: object) -> T | None:
        return self._memo.get(target) if config is self._config else None

    def remember(self, target: bytes, config: object, parsed: T) -> None:
        if config is not self._config or len(self._memo) >= self._size:
            self._memo.clear()
            self._config = config
        self._memo[target] = parsed


class HitPath(Resource):
    """The root resource: `answer(request)` for GET and HEAD (True: answered), else `app`."""

    isLeaf = True

    def __init__(self, app: IResource, answer: Callable[[Request], bool]):
        Resource.__init__(self)
        self._app = app
        self._answer = answer

    def render(self, request: Request) -> bytes | int:
        if request.method in (b"GET", b"HEAD") and self._answer(request):
            return NOT_DONE_YET
        answer: bytes | int = self._app.render(request)  # IResource types it Any
        return answer
