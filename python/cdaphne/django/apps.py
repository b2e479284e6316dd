from django.apps import AppConfig
from django.core import checks

from .checks import check_cdaphne_before_staticfiles


class CdaphneConfig(AppConfig):
    name = "cdaphne"
    label = "cdaphne"
    verbose_name = "cdaphne"

    def ready(self) -> None:
        checks.register(check_cdaphne_before_staticfiles, checks.Tags.staticfiles)
