"""SageMaker's multi-model contract: models loaded, listed, described, unloaded and invoked over
``/models`` (``serve --multi-model`` or ``SAGEMAKER_MULTI_MODEL=true``).

A load is done by the worker that receives it: it checks the name and the folder, loads the model
(which proves the files load), measures what the copy costs, and only then writes the registry
entry, so a 200 means the model loads. Every other worker loads its own copy from that entry on
first use; a watcher thread drops copies whose entry is gone or was replaced, so an unload frees
memory in every worker. Memory is counted as every worker holding every model; a load that would
pass the limit is a 507 (SageMaker then unloads models it chooses and retries): the container never
unloads a model on its own, since SageMaker keeps the list of what is loaded.
"""
from __future__ import annotations

import base64
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
from flask import Flask, Response, request

from ..errors import UserError
from ..model import artifact
from .app import Model, answer, base_app, json_response
from .errors import BadRequest, Conflict, HTTPError, InsufficientStorage, NotFound
from .memory import container_limit_bytes, release_memory, resident_bytes
from .registry import Entry, Registry, check_name, check_url
from .settings import MODELS_MEMORY_SHARE, MODELS_MEMORY_VAR, ServeSettings

LOG = logging.getLogger(__name__)
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
WATCH_SECONDS = 0.5
MAX_RESULTS = 1000


class ModelStore:
    """This worker's copies of the registry's models."""

    def __init__(self, settings: ServeSettings, loader: Callable[[Path], Model]) -> None:
        assert settings.registry is not None, "serve sets the registry folder"
        self.settings = settings
        self.registry = Registry(settings.registry)
        self.unpacked = settings.registry.parent / "unpacked"
        self.loader = loader
        self.copies: dict[str, tuple[str, Model]] = {}  # name -> (generation, model)
        self.lock = threading.Lock()
        self.base_bytes = resident_bytes()  # this worker without models
        self.seen = self.registry.version()

    # --- memory ---------------------------------------------------------------------------------
    def budget_bytes(self) -> int:
        """What all copies of all models may take together."""
        if self.settings.models_memory_bytes is not None:
            return self.settings.models_memory_bytes
        return int(container_limit_bytes() * MODELS_MEMORY_SHARE) - self.base_bytes * self.settings.workers

    def accounted_bytes(self) -> int:
        return sum(entry.bytes_per_worker for entry in self.registry.entries()) * self.settings.workers

    def _refuse_over_budget(self, name: str, per_worker: int, measured: bool) -> None:
        need, used, budget = per_worker * self.settings.workers, self.accounted_bytes(), self.budget_bytes()
        if used + need > budget:
            raise InsufficientStorage(
                f"model {name!r} {'takes' if measured else 'would take about'} {need / 2**20:.0f} MB "
                f"({self.settings.workers} worker(s)); loaded models take {used / 2**20:.0f} MB of "
                f"{budget / 2**20:.0f} MB ({MODELS_MEMORY_VAR})")

    # --- the contract ---------------------------------------------------------------------------
    def load(self, name: str, url: object) -> Entry:
        folder = check_url(url, self.settings.models_root)
        with self.registry.locked():
            if self.registry.get(name) is not None:
                raise Conflict(f"model {name!r} is already loaded")
            generation = uuid.uuid4().hex
            target = self.unpacked / generation
            try:
                model_dir = artifact.locate(folder, extract_to=target)
            except UserError as exc:
                shutil.rmtree(target, ignore_errors=True)
                raise BadRequest(f"url {url!r}: {exc}") from None
            extracted = model_dir.is_relative_to(self.unpacked)
            try:
                if not (model_dir / artifact.PARAMS_FILE).is_file():
                    raise BadRequest(f"url {url!r}: no {artifact.PARAMS_FILE} beside {artifact.SYMBOL_FILE}")
                # Parameters in memory at least once per copy, before anything is allocated for them.
                params_bytes = (model_dir / artifact.PARAMS_FILE).stat().st_size
                self._refuse_over_budget(name, params_bytes, measured=False)
                before = resident_bytes()
                model = self._load_copy(name, model_dir)
                cost = max(resident_bytes() - before, params_bytes)
                self._refuse_over_budget(name, cost, measured=True)
            except Exception:
                if extracted:
                    shutil.rmtree(target, ignore_errors=True)
                raise
            entry = Entry(name=name, url=str(url), model_dir=str(model_dir), generation=generation,
                          bytes_per_worker=cost, extracted=extracted)
            self.registry.add(entry)
        with self.lock:
            self.copies[name] = (generation, model)
        LOG.info("model %r loaded from %s (%.0f MB per worker)", name, url, cost / 2**20)
        return entry

    def _load_copy(self, name: str, model_dir: Path) -> Model:
        """Loads and warms up one copy (the first forward allocates what later ones reuse)."""
        try:
            model = self.loader(model_dir)
            model.predict(np.zeros((32, 32, 3), np.uint8))
            return model
        except MemoryError:
            raise InsufficientStorage(f"model {name!r}: out of memory while loading it") from None
        except UserError as exc:
            raise BadRequest(f"model {name!r} in {model_dir}: {exc}") from None
        except Exception as exc:
            LOG.exception("model %r in %s cannot be loaded", name, model_dir)
            raise HTTPError(f"model {name!r} in {model_dir} cannot be loaded: {type(exc).__name__}: "
                            f"{artifact.last_line(exc, 500)}") from None

    def model(self, name: str) -> Model:
        """This worker's copy of name's model, loaded on first use; 404 when it is not loaded."""
        entry = self.registry.get(name)
        with self.lock:
            if entry is None:
                self.copies.pop(name, None)
                raise NotFound(f"model {name!r} is not loaded")
            copy = self.copies.get(name)
            if copy is not None and copy[0] == entry.generation:
                return copy[1]
        try:
            model = self._load_copy(name, Path(entry.model_dir))
        except Exception:
            latest = self.registry.get(name)
            if latest is None or latest.generation != entry.generation:  # unloaded meanwhile
                raise NotFound(f"model {name!r} is not loaded") from None
            raise
        with self.lock:
            self.copies[name] = (entry.generation, model)
        LOG.info("worker %d loaded its copy of model %r", os.getpid(), name)
        return model

    def unload(self, name: str) -> None:
        with self.registry.locked():
            entry = self.registry.remove(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not loaded")
        with self.lock:
            self.copies.pop(name, None)
        release_memory()
        if entry.extracted:
            shutil.rmtree(entry.model_dir, ignore_errors=True)
        LOG.info("model %r unloaded", name)

    def sync(self) -> None:
        """Drops copies whose registry entry is gone or replaced."""
        version = self.registry.version()
        if version == self.seen:
            return
        self.seen = version
        current = {entry.name: entry.generation for entry in self.registry.entries()}
        with self.lock:
            stale = [n for n, (generation, _) in self.copies.items() if current.get(n) != generation]
            for name in stale:
                del self.copies[name]
        if stale:
            release_memory()

    def watch(self) -> None:
        """Runs sync every WATCH_SECONDS in a daemon thread."""
        def loop() -> None:
            while True:
                threading.Event().wait(WATCH_SECONDS)
                try:
                    self.sync()
                except Exception:  # never let the watcher die silently
                    LOG.exception("multi-model registry watcher")
        threading.Thread(target=loop, name="registry-watch", daemon=True).start()


def _page(entries: list[Entry], token: str | None, max_results: int) -> tuple[list[Entry], str | None]:
    """Entries after the token's name (the token: the last name of the previous page, base64)."""
    if token:
        try:
            after = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode("utf-8")
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            raise BadRequest(f"next_page_token {token[:100]!r} is not one this server gave") from None
        entries = [e for e in entries if e.name > after]
    page = entries[:max_results]
    more = len(entries) > max_results
    return page, base64.urlsafe_b64encode(page[-1].name.encode()).decode() if more else None


def create_multi_model_app(store: ModelStore, settings: ServeSettings) -> Flask:
    app = base_app()

    def described(entry: Entry) -> dict[str, str]:
        return {"modelName": entry.name, "modelUrl": entry.url}

    @app.post("/models")
    def load() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest('the body must be JSON: {"model_name": NAME, "url": FOLDER}')
        entry = store.load(check_name(body.get("model_name")), body.get("url"))
        return json_response(200, {"status": f"model {entry.name!r} loaded"})

    @app.get("/models")
    def listed() -> Response:
        token = request.args.get("next_page_token") or request.args.get("nextPageToken")
        try:
            max_results = int(request.args.get("max_results", MAX_RESULTS))
        except ValueError:
            raise BadRequest(f"max_results {request.args.get('max_results')!r} is not an integer") from None
        if not 1 <= max_results <= MAX_RESULTS:
            raise BadRequest(f"max_results {max_results} must be from 1 to {MAX_RESULTS}")
        page, next_token = _page(store.registry.entries(), token, max_results)
        body: dict = {"models": [described(e) for e in page]}
        if next_token:
            body["nextPageToken"] = next_token
        return json_response(200, body)

    @app.get("/models/<name>")
    def describe(name: str) -> Response:
        entry = store.registry.get(check_name(name))
        if entry is None:
            raise NotFound(f"model {name!r} is not loaded")
        return json_response(200, described(entry))

    @app.delete("/models/<name>")
    def unload(name: str) -> Response:
        store.unload(check_name(name))
        return json_response(200, {"status": f"model {name!r} unloaded"})

    @app.post("/models/<name>/invoke")
    def invoke(name: str) -> Response:
        target = request.headers.get(TARGET_MODEL)
        if target:
            LOG.debug("invoke %r (TargetModel %r)", name, target[:300])
        return answer(store.model(check_name(name)), settings)

    return app
