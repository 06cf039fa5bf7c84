"""A local OpenAI-compatible endpoint for a GGUF: llama-cpp-python's server (its ``[server]`` extra, optional for
hqq2gguf: ``pip install 'hqq2gguf[serve]'``), bound to 127.0.0.1 unless asked otherwise, chatting through the
GGUF's own chat template (``tokenizer.chat_template``), as Ollama and llama.cpp's llama-server do.

    serve(ServeOptions(Path("m.gguf"), port=8080))   # /v1/chat/completions, /v1/completions, /v1/models
                                                     # until Ctrl-C or SIGTERM

The port is checked before the model is loaded, so a port in use is one line, not a traceback after loading.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hqq2gguf.errors import InputError, OptionError, UnsupportedError
from hqq2gguf.runtime.llama import check_gguf, effective_gpu_layers, warn_if_amx
from hqq2gguf.runtime.structure import CHAT_TEMPLATE_KEY

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: llama-cpp-python's name for "the GGUF's tokenizer.chat_template, rendered with Jinja".
GGUF_TEMPLATE_FORMAT = "chat_template.default"


@dataclass(frozen=True)
class ServeOptions:
    """What ``hqq2gguf serve`` runs; validated on construction."""

    model: Path
    host: str = LOOPBACK
    """The address to listen on: loopback by default, so the model is not exposed to the network."""
    port: int = 8080
    n_ctx: int = 2048
    n_gpu_layers: int = 0
    n_threads: int | None = None
    alias: str | None = None
    """The model name clients use (``"model"`` in requests, /v1/models); default: the file's stem."""

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise OptionError(f"--port must be between 1 and 65535, got {self.port!r}")
        if not self.host.strip():
            raise OptionError("--host must not be empty")
        if self.n_ctx < 16:
            raise OptionError(f"--ctx-size must be at least 16, got {self.n_ctx}")


def check_port_free(host: str, port: int) -> None:
    """Fail with one line when ``host:port`` cannot be listened on (in use, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OptionError(f"port {port} on {host} is in use: stop what listens there, or choose another "
                                  "with --port") from e
            raise OptionError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


def chat_format(path: Path) -> str | None:
    """The GGUF's own template when it has one (llama-cpp-python would otherwise swap a template it recognises
    for its built-in approximation); None, with a warning, when it has none."""
    from hqq2gguf.read.gguf_reader import GgufReader

    if GgufReader(path).get_field(CHAT_TEMPLATE_KEY) is not None:
        return GGUF_TEMPLATE_FORMAT
    logger.warning("%s has no %s: llama-cpp-python guesses a chat format, which this model may not have been "
                   "trained on", path, CHAT_TEMPLATE_KEY)
    return None


def _server_modules() -> tuple[Any, Any, Any]:
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        raise UnsupportedError(f"serve needs llama-cpp-python's server extra ({e.name} is missing): "
                               "pip install 'hqq2gguf[serve]'") from e
    return uvicorn, create_app, (ModelSettings, ServerSettings)


def serve(options: ServeOptions) -> None:
    """Load the model and answer requests until Ctrl-C or SIGTERM; return normally after either."""
    path = check_gguf(options.model)
    uvicorn, create_app, (model_settings, server_settings) = _server_modules()
    check_port_free(options.host, options.port)
    warn_if_amx()
    settings = model_settings(model=str(path), model_alias=options.alias or path.stem, n_ctx=options.n_ctx,
                              n_gpu_layers=effective_gpu_layers(options.n_gpu_layers),
                              n_threads=options.n_threads or model_settings.model_fields["n_threads"].default,
                              chat_format=chat_format(path), verbose=False)
    try:
        app = create_app(server_settings=server_settings(host=options.host, port=options.port),
                         model_settings=[settings])
    except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
        raise InputError(f"llama.cpp cannot load it: {e}", file=path) from e
    logger.info("serving %s as %r at http://%s:%d/v1 (Ctrl-C to stop)", path, settings.model_alias, options.host,
                options.port)
    _run_until_stopped(uvicorn.Server(uvicorn.Config(app, host=options.host, port=options.port, log_level="warning")))


def _run_until_stopped(server: Any) -> None:
    """uvicorn stops gracefully on Ctrl-C and SIGTERM, then raises the signal again; both are the normal way to
    stop a server, so both end here without an error."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if main else None
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    logger.info("server stopped")
