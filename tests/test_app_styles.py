"""Application objects of unusual shapes served as Daphne (asgiref) serves them."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize(("app", "style"), [
    # Taken for ASGI 2 (its __call__ is not a coroutine function): every
    # request failed with a TypeError.
    ("tests.apps.callables:partial_app", "partial"),
    # asgiref's _asgi_single_callable hint was ignored: ASGI 2 as well.
    ("tests.apps.callables:hinted_app", "hinted"),
    ("tests.apps.asgi2:app", None),
])
def test_application_shapes(serve, app, style):
    proc = serve(app, "--lifespan", "off")
    r = httpx.get(proc.url("/"), timeout=5)
    assert r.status_code == 200, proc.log_tail()
    if style is not None:
        assert r.json() == {"style": style}
