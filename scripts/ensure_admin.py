#!/usr/bin/env python3
"""Create the first admin account if the portal has none, and print its login once.

`make run` calls this after migrating. When the portal ships its own `ensure_admin`
management command, that command is used instead. Otherwise a superuser named `admin`
gets a random password, printed once and kept in var/admin-password.txt (mode 0600) so
the person who ran `make run` can find it again. An existing admin is left alone.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORD_FILE = REPO_ROOT / "var" / "admin-password.txt"
USERNAME = "admin"


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # O_CREAT's mode does not apply to a file that already existed


def main() -> int:
    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django
    from django.core.management import call_command, get_commands

    django.setup()
    if "ensure_admin" in get_commands():
        call_command("ensure_admin")
        return 0

    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    admin = user_model._default_manager.filter(is_superuser=True).order_by("pk").first()
    if admin is not None:
        hint = f", password in {PASSWORD_FILE}" if PASSWORD_FILE.exists() else ""
        print(f"Admin account exists: login {admin.get_username()}{hint}")
        return 0

    password = secrets.token_urlsafe(12)
    login = "admin@localhost" if user_model.USERNAME_FIELD == "email" else USERNAME
    fields = {user_model.USERNAME_FIELD: login, "password": password}
    if "email" in user_model.REQUIRED_FIELDS:
        fields["email"] = "admin@localhost"
    user_model._default_manager.create_superuser(**fields)
    write_private(PASSWORD_FILE, f"{login}\n{password}\n")
    print(f"Created admin account  login: {login}  password: {password}")
    print(f"(printed once; also kept in {PASSWORD_FILE}, readable only by you)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
