"""pytest plugin: asgiref's own tests with every event loop cdaphne's
(pytest-asyncio's loops come from the policy too)."""

from __future__ import annotations

import cdaphne_policy  # noqa: F401  (installs the policy)
