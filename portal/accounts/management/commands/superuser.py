"""`manage.py superuser grant|revoke USERNAME --reason TEXT`: the audited way to change
who is a superuser. Administrators cannot tick the box in the admin site; the first
superuser comes from `manage.py createsuperuser`, recorded in the audit trail too."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.accounts.services import superuser_set


class Command(BaseCommand):
    help = "Grant or revoke superuser status; the audit trail records it with a reason."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=("grant", "revoke"))
        parser.add_argument("username")
        parser.add_argument(
            "--reason", required=True, help="why (kept in the audit trail)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = superuser_set(
                username=options["username"],
                grant=options["action"] == "grant",
                reason=options["reason"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        state = "is now" if user.is_superuser else "is no longer"
        self.stdout.write(f"{user.get_username()} {state} a superuser (audited).")
