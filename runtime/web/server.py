"""The browser view's server: aiohttp in a thread with its own event loop.

    view = WebView("127.0.0.1:8080", status_fn=session.status, model="clip-vit-b16")
    ...                                        # for each grounded frame, in the app loop:
    view.offer(frame, result, fps=..., latency_ms=...)
    view.serve_requests(answer)                # requests typed in the page, answered in the loop
    view.close()

Never slowing the robot: ``offer`` only stores a reference to the newest frame and its result (and, when there
are viewers, wakes the server's loop); the overlay is drawn and JPEG-encoded in the server's thread, once per
frame some viewer is ready for (once for all the viewers asking for it), at most ``MAX_FPS`` a second per viewer,
without the heatmap (its blend would be most of the cost): about 1.5 ms of CPU per frame sent at 640x480, ~2% of
one core at 15 frames a second. Each viewer gets a frame, shows it and asks for the next (``"next"`` over the
WebSocket); it then gets the newest one, so a slow browser skips frames and a stalled one gets none, while the
loop goes on.

Requests from the page (change the commands, the threshold, pause/resume) are the control socket's requests
(docs/PROTOCOL.md): the server queues the raw JSON, the app loop answers it with the control socket's
``answer_request`` at the top of its next iteration, the reply goes back to the page. Same validation, same
errors, and they take effect from the next frame, like a ``vlmedge send``.

Endpoints: ``/`` the page, ``/ws`` the stream (a JSON text message with the targets and status, then the JPEG),
``/snapshot.jpg`` the newest frame, ``/api/state`` the newest targets and status, ``POST /api/control`` a control
request (``Content-Type: application/json``). The view has no login: it binds loopback unless told otherwise,
refuses cross-origin requests (another web site open in the same browser cannot drive the robot) and, on
loopback, Host names that are not loopback (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import cv2

from vlmedge import protocol
from vlmedge.errors import BackendUnavailable, ConfigError
from vlmedge.runtime.messaging.sockets import is_loopback_host
from vlmedge.runtime.web import DEFAULT_WEB_ADDRESS, format_web_address, parse_web_address

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "vlmedge[web]" (the aiohttp package)'
STATUS_EVERY_S = 1.0  # a viewer waiting for a frame (paused, camera down) gets the status this often
MAX_FPS = 15.0  # a viewer gets at most this many frames a second: enough to watch, a small cost per viewer
NOT_SERVING = "vlmedge is not serving requests right now (the run is starting or stopping); try again"


@dataclass(frozen=True)
class _Offered:
    """The newest grounded frame as the app loop handed it over (references, nothing copied)."""

    seq: int
    frame: Any  # runtime.io.frames.Frame
    result: Any  # GroundingResult
    overlay: Any  # the overlay the loop drew for its window or video, or None: drawn here when needed
    fps: float | None
    latency_ms: float | None


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class WebView:
    """The ``--web`` server. ``url`` is where it listens (port 0 resolved); ``frames_sent`` counts the frames
    sent to viewers (all of them together), ``viewers`` those connected now."""

    def __init__(self, address: str = DEFAULT_WEB_ADDRESS, *, status_fn: Callable[[], Mapping[str, Any]] | None = None,
                 model: str = "", jpeg_quality: int = 80, request_timeout_s: float = 10.0,
                 max_fps: float = MAX_FPS):
        try:
            import aiohttp  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable(f"the browser view (--web) ({e})", INSTALL_HINT) from None
        host, port = parse_web_address(address)
        if not 1 <= int(jpeg_quality) <= 100:
            raise ConfigError(f"WebView jpeg_quality must be in 1..100, got {jpeg_quality!r}")
        self.status_fn = status_fn
        self.model = str(model)
        self.jpeg_quality = int(jpeg_quality)
        self.request_timeout_s = float(request_timeout_s)
        if not max_fps > 0:
            raise ConfigError(f"WebView max_fps must be > 0, got {max_fps!r}")
        self.min_interval_s = 1.0 / float(max_fps)
        self.frames_sent = 0
        self.viewers = 0
        self.max_viewers = 0
        self._loopback = is_loopback_host(host)
        self._lock = threading.Lock()
        self._seq = 0
        self._offered: _Offered | None = None
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._page = resources.files(__package__).joinpath("page.html").read_bytes()
        self._render_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vlmedge-web-render")
        self._rendered: tuple[int, bytes, str] | None = None  # (seq, jpeg, state JSON) of the last frame rendered
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._sockets: set = set()
        self._runner = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(target=self._serve, args=(host, port),
                                                                 name="vlmedge-web", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            self._render_pool.shutdown()
            raise self._error
        self.url = f"http://{format_web_address(host, self.port)}/"
        log.info("browser view on %s", self.url)

    # ------------------------------------------------------------------------------ the app loop's side
    def offer(self, frame: Any, result: Any, *, overlay: Any = None, fps: float | None = None,
              latency_ms: float | None = None) -> None:
        """Hand over the newest grounded frame (never blocks; the frame's image and ``overlay`` must not be
        changed afterwards: they are read later, in the server's thread)."""
        with self._lock:
            self._seq += 1
            self._offered = _Offered(self._seq, frame, result, overlay, fps, latency_ms)
        if self.viewers:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the server's loop is closed: nobody to wake
                pass

    def serve_requests(self, answer: Callable[[bytes], dict], limit: int = 8) -> int:
        """Answer the requests typed in the page since the last call, at most ``limit`` (the rest wait for the
        next call, like the control socket's), with ``answer(raw request) -> reply``
        (``messaging.control.answer_request`` over the run's ``ControlState``); returns how many."""
        n = 0
        while n < limit:
            try:
                body, fut = self._requests.get_nowait()
            except queue.Empty:
                return n
            reply = answer(body)
            try:
                self._loop.call_soon_threadsafe(_resolve, fut, reply)
            except RuntimeError:  # closed meanwhile: the page got its 503 already
                pass
            n += 1
        return n

    def close(self) -> None:
        if self._thread is None:
            return
        self._closing = True
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:
            pass
        self._thread.join()
        self._thread = None
        self._render_pool.shutdown(wait=True)
        log.info("browser view closed (%d frames sent, at most %d viewers at once)", self.frames_sent,
                 self.max_viewers)

    def __enter__(self) -> WebView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------- the server's thread
    def _serve(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = self._loop.run_until_complete(self._start(host, port))
        except BaseException as e:
            self._error = e
            self._loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._stop())
            self._loop.close()

    async def _start(self, host: str, port: int):
        from aiohttp import web

        self._new_frame = self._loop.create_future()
        self._render_lock = asyncio.Lock()
        app = web.Application(client_max_size=4 * protocol.MAX_CONTROL_MESSAGE_BYTES)
        app.router.add_get("/", self._get_page)
        app.router.add_get("/ws", self._get_ws)
        app.router.add_get("/snapshot.jpg", self._get_snapshot)
        app.router.add_get("/api/state", self._get_state)
        app.router.add_post("/api/control", self._post_control)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            await runner.cleanup()
            address = format_web_address(host, port)
            raise ConfigError(f"--web {address}: cannot listen there: {e.strerror or e}"
                              + (" (another vlmedge running? pick another port: --web 127.0.0.1:PORT)"
                                 if "in use" in str(e) else "")) from None
        self.port = int(runner.addresses[0][1])
        return runner

    async def _stop(self) -> None:
        for fut in list(self._pending()):
            _resolve(fut, protocol.error_reply(NOT_SERVING))
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _pending(self):
        while True:
            try:
                yield self._requests.get_nowait()[1]
            except queue.Empty:
                return

    def _wake(self) -> None:
        fut, self._new_frame = self._new_frame, self._loop.create_future()
        _resolve(fut, None)

    # ----------------------------------------------------------------------------------- rendering
    def _render(self, offered: _Offered) -> tuple[bytes, str]:
        """Overlay (unless the loop drew one) and JPEG of a frame, and its state JSON; in the render thread."""
        from vlmedge.runtime.display import draw_overlay
        from vlmedge.runtime.messaging.publisher import targets_message

        image = offered.overlay
        if image is None:  # boxes, labels, relations, legend; no heatmap: blending it at full size is most of the
            # cost of a frame here (7-8 ms of CPU at 640x480 against ~1 ms for the rest and the JPEG)
            image = draw_overlay(offered.frame.image, offered.result, heatmap=False, fps=offered.fps,
                                 latency_ms=offered.latency_ms)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ConfigError(f"frame {offered.frame.id}: OpenCV could not JPEG-encode the overlay")
        message = targets_message(offered.result, offered.frame, seq=offered.seq, model=self.model)
        targets = json.loads(message[len(b"targets "):])
        return jpeg.tobytes(), self._state_json(targets)

    async def _rendered_frame(self, offered: _Offered) -> tuple[bytes, str]:
        """The frame's JPEG and state JSON, rendered once whatever the number of viewers asking for it."""
        async with self._render_lock:
            cached = self._rendered
            if cached is not None and cached[0] == offered.seq:
                return cached[1], cached[2]
            jpeg, state = await self._loop.run_in_executor(self._render_pool, self._render, offered)
            self._rendered = (offered.seq, jpeg, state)
            return jpeg, state

    def _status(self) -> dict | None:
        if self.status_fn is None:
            return None
        try:
            return dict(self.status_fn())
        except Exception:  # the page must keep working when a status field cannot be read
            log.exception("browser view: status failed")
            return None

    def _state_json(self, targets: dict | None) -> str:
        return protocol.dumps({"type": "state", "targets": targets, "status": self._status()}).decode()

    # ------------------------------------------------------------------------------------ handlers
    def _refused(self, request) -> str | None:
        """Why a request is refused (cross-origin, or a non-loopback Host on a loopback view), or None."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return f"cross-origin request from {origin!r} refused"
        if self._loopback and not is_loopback_host(request.url.host or ""):
            return f"Host {request.host!r} refused: this view listens on loopback only"
        return None

    async def _get_page(self, request):
        from aiohttp import web

        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _get_snapshot(self, request):
        from aiohttp import web

        why = self._refused(request)
        if why:
            raise web.HTTPForbidden(text=why)
        offered = self._offered
        if offered is None:
            raise web.HTTPServiceUnavailable(text="no frame grounded yet")
        jpeg, _ = await self._rendered_frame(offered)
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _get_state(self, request):
        from aiohttp import web

        why = self._refused(request)
        if why:
            raise web.HTTPForbidden(text=why)
        offered = self._offered
        state = (await self._rendered_frame(offered))[1] if offered is not None else self._state_json(None)
        return web.Response(text=state, content_type="application/json", headers={"Cache-Control": "no-store"})

    async def _post_control(self, request):
        from aiohttp import web

        why = self._refused(request)
        if why:
            return web.json_response(protocol.error_reply(why), status=403)
        if request.content_type != "application/json":
            return web.json_response(protocol.error_reply(
                f"a control request is JSON: send it with Content-Type: application/json, not "
                f"{request.content_type!r}"), status=415)
        body = await request.read()
        fut = self._loop.create_future()
        self._requests.put((body, fut))
        try:
            reply = await asyncio.wait_for(fut, self.request_timeout_s)
        except asyncio.TimeoutError:
            reply = protocol.error_reply(NOT_SERVING)
            return web.json_response(reply, status=503)
        return web.json_response(reply, status=200 if reply.get("ok") else 400, dumps=lambda d: protocol.dumps(d)
                                 .decode())

    async def _get_ws(self, request):
        from aiohttp import WSMsgType, web

        why = self._refused(request)
        if why:
            raise web.HTTPForbidden(text=why)
        ws = web.WebSocketResponse(max_msg_size=4096)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.viewers += 1
        self.max_viewers = max(self.max_viewers, self.viewers)
        ready = asyncio.Event()  # the viewer has shown its last frame and wants the next one
        ready.set()

        async def read() -> None:
            try:
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT and msg.data == "next":
                        ready.set()
            finally:
                ready.set()  # wake the sender so it sees the socket closed

        reader = asyncio.ensure_future(read())
        last, last_sent = 0, 0.0
        try:
            while not ws.closed and not self._closing:
                await ready.wait()
                wait = last_sent + self.min_interval_s - self._loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if ws.closed:
                    break
                offered = self._offered
                if offered is None or offered.seq == last:
                    try:
                        await asyncio.wait_for(asyncio.shield(self._new_frame), STATUS_EVERY_S)
                    except asyncio.TimeoutError:
                        await ws.send_str(self._state_json(None))  # paused or waiting: keep the page current
                    continue
                jpeg, state = await self._rendered_frame(offered)
                ready.clear()
                await ws.send_str(state)
                await ws.send_bytes(jpeg)
                last, last_sent = offered.seq, self._loop.time()
                self.frames_sent += 1
        except (ConnectionError, RuntimeError):  # the viewer went away mid-send
            pass
        finally:
            reader.cancel()
            self._sockets.discard(ws)
            self.viewers -= 1
            await ws.close()
        return ws


__all__ = ["INSTALL_HINT", "WebView"]
