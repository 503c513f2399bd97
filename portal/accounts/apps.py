from __future__ import annotations

from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


def _sync_roles(sender: AppConfig, **kwargs: object) -> None:
    # Runs after every migrate and after a test database flush (which empties the
    # groups the data migration created). post_migrate is sent once per app and the
    # permissions of each app are created by its own signal, so wait for the last one.
    with_models = [c for c in apps.get_app_configs() if c.models_module is not None]
    if sender is not with_models[-1]:
        return
    from portal.accounts.roles import ensure_roles

    ensure_roles(apps)


class AccountsConfig(AppConfig):
    name = "portal.accounts"
    label = "accounts"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from portal.accounts import tokens  # noqa: F401  (revocation receiver)
        from portal.security import stamp_activity_at_login

        user_logged_in.connect(
            stamp_activity_at_login, dispatch_uid="portal.security.stamp_activity"
        )

        post_migrate.connect(_sync_roles, dispatch_uid="portal.accounts.sync_roles")
