"""The hit path: a GET or HEAD of an image URL that is cached, answered without Klein.

For a small Range request on a cached image, Klein's routing, the route's coroutine and
its Deferreds cost more than the answer itself (bench/run B6). `HitPath` sits in front of
the Klein app and answers a GET or HEAD itself, synchronously, when the image route parsed
its target before (the route remembers it in `Images.image_targets`), its resolution is
still fresh and the image is cached; anything else goes to the app, routed as usual. What
is answered is the same, byte for byte, header for header.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from talos_twisted import tracing
from talos_twisted.cache import CacheStore
from talos_twisted.config import TalosConfig
from talos_twisted.errors import TalosError
from talos_twisted.request import ImageRequest
from talos_twisted.resolver import ImageResolver
from talos_twisted.serve import begin_entry, image_headers

__all__ = ["HitPath", "Images", "TargetMemo"]

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


class Images(Protocol):
    """What the hit path uses of the app (`talos_twisted.web.TalosImages`)."""

    config: TalosConfig
    resolver: ImageResolver
    cache: CacheStore
    clock: IReactorTime
    image_targets: TargetMemo[ImageRequest]

    def render_error(self, request: IRequest, error: TalosError) -> bytes: ...
    def internal_error(self, request: IRequest, failure: Failure) -> bytes: ...


class HitPath(Resource):
    """The root resource: hits answered here, everything else by `app`."""

    isLeaf = True

    def __init__(self, app: IResource, images: Images):
        Resource.__init__(self)
        self._app = app
        self._images = images

    def render(self, request: Request) -> bytes | int:
        if request.method in (b"GET", b"HEAD") and self._answer(request):
            return NOT_DONE_YET
        answer: bytes | int = self._app.render(request)  # IResource types it Any
        return answer

    def _answer(self, request: Request) -> bool:
        """Answer a hit as the image route would; False (nothing done) for anything else."""
        images = self._images
        config = images.config
        req = images.image_targets.get(request.uri, config)
        if req is None or not config.enabled:
            return False
        image = images.resolver.memoized(req)
        if image is None:
            return False
        entry = images.cache.get(image.key)
        if entry is None:
            return False
        tracing.describe_image(request, image)
        image_headers(request, image, "HIT")
        try:
            streamer = begin_entry(
                request, entry, cache=images.cache, clock=images.clock, stall_timeout=config.client_stall_timeout,
                max_ranges=config.max_ranges,
            )
        except TalosError as e:
            request.write(images.render_error(request, e))
            request.finish()
            return True
        except Exception:
            request.write(images.internal_error(request, Failure()))
            request.finish()
            return True
        if streamer is None:
            request.write(b"")  # the head, as Klein writes an empty answer
            request.finish()
            return True
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def finish(_: object) -> None:
            if not gone:
                request.finish()

        streamer.done.addCallback(finish)
        return True
