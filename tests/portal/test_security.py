"""Security: login throttling and lockout, sessions, passwords, CSRF, headers, deploy check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from portal.security import LAST_ACTIVITY_KEY
from tests.portal.conftest import assert_idle_session_ends, run_python

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a-long-enough-passphrase-42"


@pytest.fixture(autouse=True)
def _empty_cache() -> Any:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def clinician(django_user_model: Any) -> Any:
    from portal.accounts.roles import STAFF, assign_role

    user = django_user_model.objects.create_user(
        username="clinician", password=PASSWORD
    )
    assign_role(user, STAFF)
    return user


def _login(client: Client, username: str, password: str, **extra: Any) -> Any:
    return client.post(
        reverse("login"), {"username": username, "password": password}, **extra
    )


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_an_account_locks_after_repeated_failures_even_for_the_right_password(
    client, clinician, settings
):
    for _ in range(settings.LOGIN_MAX_FAILURES):
        response = _login(client, "clinician", "wrong-password")
        assert response.status_code == 200
        assert not _signed_in(client)

    response = _login(client, "clinician", PASSWORD)

    assert not _signed_in(client)
    assert "Too many failed sign-in attempts for this account" in response.text


def test_a_lock_covers_the_admin_login_too(client, django_user_model, settings):
    django_user_model.objects.create_superuser("boss", "b@example.org", PASSWORD)
    for _ in range(settings.LOGIN_MAX_FAILURES):
        _login(client, "boss", "wrong-password")

    client.post(reverse("admin:login"), {"username": "boss", "password": PASSWORD})

    assert not _signed_in(client)


class DirectoryBackend:
    """Stands for a directory (LDAP) backend: its own users, its own passwords."""

    def authenticate(self, request: Any, username: str = "", password: str = "") -> Any:
        from django.contrib.auth import get_user_model

        if username == "directory-user" and password == PASSWORD:
            user, _ = get_user_model().objects.get_or_create(username=username)
            return user
        return None

    def get_user(self, user_id: int) -> Any:
        from django.contrib.auth import get_user_model

        return get_user_model().objects.filter(pk=user_id).first()


def test_a_lock_covers_users_of_any_authentication_backend(client, settings, db):
    settings.AUTHENTICATION_BACKENDS = [
        "axes.backends.AxesStandaloneBackend",
        f"{__name__}.DirectoryBackend",
    ]
    _login(client, "directory-user", PASSWORD)
    assert _signed_in(client)
    client.logout()
    for _ in range(settings.LOGIN_MAX_FAILURES):
        _login(client, "directory-user", "wrong-password")

    response = _login(client, "Directory-User ", PASSWORD)
    assert "Too many failed sign-in attempts for this account" in response.text
    response = _login(client, "directory-user", PASSWORD)

    assert not _signed_in(client)
    assert "Too many failed sign-in attempts for this account" in response.text


def test_a_lock_covers_the_api_token_endpoint_without_saying_so(
    client, clinician, settings
):
    url = reverse("api:token")
    for _ in range(settings.LOGIN_MAX_FAILURES):
        client.post(url, {"username": "clinician", "password": "wrong-password"})

    refused = client.post(url, {"username": "clinician", "password": PASSWORD})

    assert refused.status_code == 401
    assert "Wrong username or password" in refused.json()["error"]


def test_a_lock_on_one_account_leaves_the_others_alone(
    client, clinician, django_user_model, settings
):
    django_user_model.objects.create_user(username="colleague", password=PASSWORD)
    for _ in range(settings.LOGIN_MAX_FAILURES):
        _login(client, "clinician", "wrong-password")

    _login(client, "colleague", PASSWORD)

    assert _signed_in(client)


def test_the_lock_ends_after_the_lockout_period(client, clinician, settings):
    settings.LOGIN_LOCKOUT_SECONDS = 1
    for _ in range(settings.LOGIN_MAX_FAILURES):
        _login(client, "clinician", "wrong-password")
    time.sleep(1.5)

    _login(client, "clinician", PASSWORD)

    assert _signed_in(client)


def test_a_success_before_the_limit_resets_the_count(client, clinician, settings):
    for _ in range(settings.LOGIN_MAX_FAILURES - 1):
        _login(client, "clinician", "wrong-password")
    _login(client, "clinician", PASSWORD)
    client.logout()
    for _ in range(settings.LOGIN_MAX_FAILURES - 1):
        _login(client, "clinician", "wrong-password")

    _login(client, "clinician", PASSWORD)

    assert _signed_in(client)


def test_password_spraying_from_one_address_is_throttled(client, clinician, settings):
    settings.LOGIN_MAX_FAILURES_PER_IP = 3
    for name in ("ann", "bob", "cat"):
        _login(client, name, "Winter2026!", REMOTE_ADDR="10.1.2.3")

    refused = _login(client, "clinician", PASSWORD, REMOTE_ADDR="10.1.2.3")
    assert "from this network address" in refused.text
    _login(client, "clinician", PASSWORD, REMOTE_ADDR="10.9.9.9")
    assert _signed_in(client)


def test_behind_a_proxy_the_forwarded_address_is_throttled_not_the_proxy(
    client, clinician, settings
):
    settings.NUM_PROXIES = 1
    settings.TRUSTED_PROXIES = ["10.0.0.0/29"]
    settings.LOGIN_MAX_FAILURES_PER_IP = 2
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    for name in ("ann", "bob"):
        _login(client, name, "x", HTTP_X_FORWARDED_FOR="203.0.113.7", **proxy)

    _login(client, "clinician", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.2", **proxy)

    assert _signed_in(client)


def test_a_forged_forwarded_for_does_not_evade_the_address_limit(
    client, clinician, settings
):
    """NUM_PROXIES=1 and port 8000 reachable directly: a client sending its own
    X-Forwarded-For is still counted under its own address."""
    settings.NUM_PROXIES = 1
    settings.TRUSTED_PROXIES = ["10.0.0.1"]
    settings.LOGIN_MAX_FAILURES_PER_IP = 3
    attacker = {"REMOTE_ADDR": "192.0.2.50"}
    for number, name in enumerate(("ann", "bob", "cat")):
        _login(
            client, name, "x", HTTP_X_FORWARDED_FOR=f"203.0.113.{number}", **attacker
        )

    refused = _login(
        client, "clinician", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.99", **attacker
    )

    assert "from this network address" in refused.text
    assert not _signed_in(client)


def test_failures_from_elsewhere_do_not_lock_the_account_owner_out(
    client, clinician, settings
):
    """Anyone can type someone's name: the lock holds (name, address) pairs."""
    for _ in range(settings.LOGIN_MAX_FAILURES):
        _login(client, "clinician", "wrong-password", REMOTE_ADDR="192.0.2.66")
    still_locked = _login(client, "clinician", PASSWORD, REMOTE_ADDR="192.0.2.66")
    assert "Too many failed sign-in attempts for this account" in still_locked.text
    assert not _signed_in(client)

    _login(client, "clinician", PASSWORD, REMOTE_ADDR="10.20.30.40")

    assert _signed_in(client)
    client.logout()
    # The documented way to lift the pair's lock.
    call_command("axes_reset_ip_username", "192.0.2.66", "clinician")
    _login(client, "clinician", PASSWORD, REMOTE_ADDR="192.0.2.66")
    assert _signed_in(client)


def test_forwarded_for_needs_the_proxies_addresses():
    result = run_python(
        "-c",
        "import portal.settings",
        env={"DEBUG": "true", "NUM_PROXIES": "1", "TRUSTED_PROXIES": ""},
    )
    assert result.returncode != 0
    assert "NUM_PROXIES=1 needs TRUSTED_PROXIES" in result.stderr
    bad = run_python(
        "-c",
        "import portal.settings",
        env={"DEBUG": "true", "NUM_PROXIES": "1", "TRUSTED_PROXIES": "proxy.local"},
    )
    assert "TRUSTED_PROXIES: 'proxy.local' is not an IP address" in bad.stderr


def test_failed_logins_never_log_the_user_name(client, caplog, db):
    with caplog.at_level("DEBUG"):
        _login(client, "Margaret-Hamilton-MRN-44", "wrong-password")
    assert "Margaret" not in caplog.text
    assert "MRN-44" not in caplog.text


def test_a_session_ends_after_the_idle_timeout(client, clinician, settings):
    client.force_login(clinician)
    assert client.get(reverse("clinical:patient_list")).status_code == 200
    assert_idle_session_ends(client, settings)
    assert not _signed_in(client)


def test_polling_does_not_keep_an_idle_session_alive(client, clinician, settings):
    client.force_login(clinician)
    client.get(reverse("clinical:patient_list"))
    session = client.session
    idle_since = time.time() - settings.SESSION_IDLE_TIMEOUT + 60
    session[LAST_ACTIVITY_KEY] = idle_since
    session.save()

    client.get("/studies/999999/status.json")

    assert client.session[LAST_ACTIVITY_KEY] == idle_since


def test_the_idle_clock_runs_when_only_polls_arrive(
    client, clinician, settings, monkeypatch
):
    """Signed in, then only the study page's status polls: the session still ends
    SESSION_IDLE_TIMEOUT after the last request of the user's own."""
    import portal.security

    start = time.time()
    client.force_login(clinician)
    poll = "/studies/999999/status.json"
    client.get(poll)  # before any page of the user's own
    later = start + settings.SESSION_IDLE_TIMEOUT + 5
    monkeypatch.setattr(portal.security.time, "time", lambda: later)

    response = client.get(poll)

    assert not _signed_in(client)
    assert response.status_code in (302, 401, 403)


def test_a_login_starts_the_idle_clock(client, clinician):
    _login(client, "clinician", PASSWORD)
    assert _signed_in(client)
    assert client.session[LAST_ACTIVITY_KEY] >= time.time() - 60


def test_sessions_have_a_bounded_life_and_end_with_the_browser(settings):
    assert settings.SESSION_EXPIRE_AT_BROWSER_CLOSE is True
    assert settings.SESSION_COOKIE_AGE <= 24 * 3600
    assert settings.SESSION_IDLE_TIMEOUT <= 3600
    assert settings.SESSION_COOKIE_HTTPONLY is True


@pytest.mark.parametrize(
    "password",
    ["short1!", "password12345", "123456789012345", "clinician-2026"],
)
def test_weak_passwords_are_refused(password, django_user_model):
    user = django_user_model(username="clinician-2026")
    with pytest.raises(ValidationError):
        validate_password(password, user)


def test_a_long_uncommon_passphrase_is_accepted(django_user_model):
    validate_password(
        "tidal-orchid-lantern-58", django_user_model(username="clinician")
    )


def test_pages_carry_a_content_security_policy_and_security_headers(client, clinician):
    anonymous = client.get(reverse("login"))
    client.force_login(clinician)
    signed_in = client.get(reverse("clinical:patient_list"))

    for response in (anonymous, signed_in):
        policy = response["Content-Security-Policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy
        assert "'unsafe-inline'" not in policy
        assert "frame-ancestors 'none'" in policy
        assert "object-src 'none'" in policy
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"
        assert "camera=()" in response["Permissions-Policy"]
    assert "no-store" in signed_in["Cache-Control"]


def test_templates_have_no_inline_script_or_style_the_policy_would_block():
    templates = list((REPO_ROOT / "portal").rglob("templates/**/*.html"))
    assert templates
    for template in templates:
        text = template.read_text()
        assert " onclick=" not in text and " onload=" not in text, template
        assert "javascript:" not in text, template
        for chunk in text.split("<script")[1:]:
            head = chunk.split(">", 1)[0]
            assert "src=" in head or "application/json" in head, template


def _all_patterns(resolver: URLResolver, prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            found += _all_patterns(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            found.append((prefix + str(entry.pattern), entry.callback))
    return found


# Views that may skip Django's CSRF check, and why.
CSRF_EXEMPT_ALLOWED = (
    # Django REST framework views are csrf_exempt at the Django level and enforce CSRF
    # themselves for session-authenticated requests (token clients send no cookie).
    "rest_framework",
    "portal.api",
)


def test_no_view_skips_csrf_protection_unless_it_does_its_own():
    exempt = []
    for route, callback in _all_patterns(get_resolver()):
        if getattr(callback, "csrf_exempt", False):
            module = getattr(callback, "__module__", "") or ""
            view_class = getattr(callback, "cls", None)
            modules = {module, getattr(view_class, "__module__", "") or ""}
            if not any(m.startswith(CSRF_EXEMPT_ALLOWED) for m in modules):
                exempt.append(route)
    assert exempt == []


def test_forms_refuse_a_post_without_a_csrf_token(clinician, study):
    client = Client(enforce_csrf_checks=True)
    assert (
        client.post(reverse("login"), {"username": "clinician", "password": PASSWORD})
    ).status_code == 403
    client.force_login(clinician)
    targets = [
        reverse("clinical:patient_list"),
        reverse("clinical:patient_detail", args=[study.patient.pk]),
        reverse("clinical:study_upload", args=[study.pk]),
        reverse("analyses:retry", args=[1]),
        reverse("logout"),
    ]
    for url in targets:
        assert client.post(url, {}).status_code == 403, url


def _run_in_production(tmp_path: Path, *args: str) -> Any:
    """Python with these arguments, under the production settings, in a subprocess."""
    production = {
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DEBUG": "false",
        "SECRET_KEY": "p9Vx!r7Qz#2mL8wT@4nK6yB$1cH5jF0sD3gA-uE_oI+eR&tY*Lq8Zs0Wd",
        "ALLOWED_HOSTS": "portal.hospital.example",
        "CSRF_TRUSTED_ORIGINS": "https://portal.hospital.example",
        "SECURE_COOKIES": "true",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
    }
    return run_python(
        *args,
        env=production,
        drop=("DJANGO", "SECURE_", "SESSION_", "DEBUG"),
        timeout=300,
    )


def test_check_deploy_is_clean_under_production_settings(tmp_path):
    result = _run_in_production(
        tmp_path, "manage.py", "check", "--deploy", "--fail-level", "WARNING"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_turn_on_https_protections(tmp_path):
    script = (
        "from django.conf import settings as s;"
        "print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS >= 31536000,"
        " s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.DEBUG)"
    )
    result = _run_in_production(
        tmp_path, "-c", f"import django; django.setup(); {script}"
    )
    assert result.stdout.split() == ["True", "True", "True", "True", "False"], (
        result.stderr
    )
