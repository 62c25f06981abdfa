"""The application's "TIPO model served at URL" setting: LoaderBackends hands out the served model instead
of loading one, with the chosen model's protocol and context, and loads locally again once it is cleared."""

from __future__ import annotations

from kgen.engine.replay import ReplayBackend
from kgen.models import loader
from kgen.models.registry import MODELS
from kgen.rewriter import BackendConfig, LoaderBackends
from kgen.settings import TipoSettings


def test_a_served_url_replaces_loading_and_is_kept_while_it_stays(tmp_path):
    config = {"url": "http://127.0.0.1:9/v1"}
    made, loaded = [], []

    def served(options):
        made.append(options)
        return ReplayBackend(["tag: a"], name=options.base_url)

    def builder(ref, store, options):
        loaded.append(ref)
        return loader.LoadedModel(ReplayBackend(["tag: b"]), ref, "cpu")

    backends = LoaderBackends(
        lambda: BackendConfig(tmp_path, offline=True, served_url=config["url"]),
        builder=builder,
        served=served,
    )
    settings = TipoSettings(model=MODELS[0].name)
    for _ in range(2):
        with backends.session(settings) as (backend, spec):
            assert backend.name == "http://127.0.0.1:9/v1" and spec == MODELS[0]
    assert len(made) == 1 and loaded == []
    assert made[0].default_context_length == MODELS[0].context_length and made[0].model is None

    config["url"] = "http://127.0.0.1:10/v1"
    with backends.session(settings) as (backend, _):
        assert backend.name == "http://127.0.0.1:10/v1"
    config["url"] = ""
    with backends.session(settings) as (backend, spec):
        assert isinstance(backend, loader.ManagedBackend) and spec == MODELS[0]
    assert len(made) == 2 and len(loaded) == 1
