"""Directory login against a real OpenLDAP server (slapd) started by each test.

Users sign in through the real login form (with its CSRF check); the portal finds them
with its service account, maps their directory groups to roles, and applies the same
lockout and session rules as to local accounts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from portal.accounts.directory_settings import directory_settings
from portal.accounts.roles import ADMINISTRATOR, RADIOLOGIST, STAFF, user_roles
from portal.review.models import Review
from tests.portal.accounts import slapd
from tests.portal.conftest import assert_idle_session_ends
from tests.portal.review.conftest import analysed_scan

pytestmark = pytest.mark.django_db

_missing = slapd.missing_reason()
if _missing:
    pytest.skip(_missing, allow_module_level=True)
try:
    import ldap  # noqa: F401
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # .ci/run installs python-ldap; its absence there is a broken build
    pytest.skip(
        "python-ldap is not installed (pip install -r requirements-ldap.txt)",
        allow_module_level=True,
    )

S = slapd.SUFFIX
DIRECTORY_BACKEND = "portal.accounts.directory.DirectoryBackend"
PASSWORDS = {
    "alice": "alice-directory-passphrase",
    "bob": "bob-directory-passphrase",
    "carol": "carol-directory-passphrase",
    "dave": "dave-directory-passphrase",
    # Same name as the local staff account of the `user` fixture, another password.
    "sonographer": "an-impostor-in-the-directory",
}
DIRECTORY = (
    f"""\
dn: {S}
objectClass: dcObject
objectClass: organization
dc: hospital
o: Test Hospital

dn: ou=people,{S}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{S}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{S}
objectClass: organizationalUnit
ou: services

dn: {slapd.SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: portal
userPassword: {slapd.SERVICE_PASSWORD}
"""
    + "".join(
        f"""
dn: uid={uid},ou=people,{S}
objectClass: inetOrgPerson
uid: {uid}
cn: {uid.title()} Example
givenName: {uid.title()}
sn: Example
mail: {uid}@hospital.test
userPassword: {password}
"""
        for uid, password in PASSWORDS.items()
    )
    + "".join(
        f"""
dn: cn={group},ou=groups,{S}
objectClass: groupOfNames
cn: {group}
member: uid={member},ou=people,{S}
"""
        for group, member in (
            ("radiology", "alice"),
            ("it-admins", "carol"),
            ("clinical-staff", "dave"),
            ("cafeteria", "bob"),  # a group mapped to no role
        )
    )
)


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[slapd.Slapd]:
    server = slapd.Slapd(tmp_path / "slapd")
    server.start()
    try:
        server.add(DIRECTORY)
        yield server
    finally:
        server.stop()


def configure(settings: Any, uri: str) -> None:
    """The settings portal/settings.py builds from LDAP_* variables, for this server."""
    values = directory_settings(
        server_uri=uri,
        bind_dn=slapd.SERVICE_DN,
        bind_password=slapd.SERVICE_PASSWORD,
        user_search_base=f"ou=people,{S}",
        user_filter="(uid=%(user)s)",
        user_dn_template="",
        group_search_base=f"ou=groups,{S}",
        group_type="groupofnames",
        group_filter="",
        role_groups={
            # Spelled as an administrator might: other case, spaces after commas.
            STAFF: f"cn=clinical-staff, ou=groups, {S}",
            RADIOLOGIST: f"CN=Radiology,OU=Groups,{S.upper()}",
            ADMINISTRATOR: f"cn=it-admins,ou=groups,{S}",
        },
        attribute_map={"first_name": "givenName", "last_name": "sn", "email": "mail"},
        start_tls=False,
        timeout=5,
    )
    for name, value in values.items():
        setattr(settings, name, value)
    # As portal/settings.py does: after the lockout backend and the local accounts'.
    settings.AUTHENTICATION_BACKENDS = [
        *(b for b in settings.AUTHENTICATION_BACKENDS if b != DIRECTORY_BACKEND),
        DIRECTORY_BACKEND,
    ]


@pytest.fixture
def directory_login(settings: Any, directory: slapd.Slapd) -> slapd.Slapd:
    configure(settings, directory.uri)
    return directory


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def sign_in(client: Client, username: str, password: str) -> Any:
    """Post the login form as a browser does: its CSRF token from the page."""
    page = client.get(reverse("login")).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    return client.post(
        reverse("login"),
        {"username": username, "password": password, "csrfmiddlewaretoken": token},
    )


def signed_in_user(client: Client) -> Any:
    from django.contrib.auth import get_user_model

    user_id = client.session.get("_auth_user_id")
    return get_user_model().objects.get(pk=user_id) if user_id else None


def csrf_client() -> Client:
    return Client(enforce_csrf_checks=True)


def test_a_directory_radiologist_signs_in_and_signs_a_review(
    directory_login, study, user
):
    scan = analysed_scan(study, user)
    client = csrf_client()

    response = sign_in(client, "alice", PASSWORDS["alice"])

    assert response.status_code == 302
    assert response["Location"] == reverse("review:dashboard")
    alice = signed_in_user(client)
    assert alice.username == "alice"
    assert (alice.first_name, alice.email) == ("Alice", "alice@hospital.test")
    assert not alice.has_usable_password()
    assert user_roles(alice) == [RADIOLOGIST]
    assert not alice.is_staff

    review_url = reverse("review:scan_review", args=[scan.pk])
    page = client.get(review_url)
    assert page.status_code == 200
    token = re.search(
        r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()
    ).group(1)
    signed = client.post(
        review_url,
        {
            "csrfmiddlewaretoken": token,
            "analysis": scan.analyses.get().pk,
            "agrees_with_model": "yes",
            "label": "",
            "birads": "4A",
            "note": "read from the directory account",
            "action": "sign",
        },
    )
    assert signed.status_code == 302
    review = Review.objects.get()
    assert review.is_signed
    assert review.author_id == alice.pk


def test_a_directory_user_in_no_mapped_group_signs_in_and_sees_nothing(
    directory_login, study, user
):
    scan = analysed_scan(study, user)
    client = csrf_client()

    assert sign_in(client, "bob", PASSWORDS["bob"]).status_code == 302
    bob = signed_in_user(client)
    assert bob is not None and user_roles(bob) == []

    for url in (
        reverse("review:dashboard"),
        reverse("review:worklist"),
        reverse("review:scan_review", args=[scan.pk]),
        reverse("clinical:study_detail", args=[study.pk]),
        reverse("clinical:patient_list"),
        reverse("review:study_report", args=[study.pk]),
    ):
        assert client.get(url).status_code == 403, url
    api = client.get("/api/v1/studies/")
    assert api.status_code == 403 or api.json()["results"] == []


def test_a_wrong_directory_password_is_refused_and_counted_for_lockout(
    directory_login, settings
):
    client = csrf_client()
    response = sign_in(client, "alice", "not-alices-password")
    assert response.status_code == 200
    assert signed_in_user(client) is None
    assert "Please enter a correct username and password" in response.content.decode()
    for _ in range(settings.LOGIN_MAX_FAILURES - 1):
        response = sign_in(client, "alice", "not-alices-password")
        assert signed_in_user(client) is None

    # Locked: the right directory password is refused too, before the directory is asked.
    response = sign_in(client, "alice", PASSWORDS["alice"])
    assert response.status_code == 200
    assert signed_in_user(client) is None
    assert "locked" in response.content.decode()
    # The API's token endpoint too: the lockout backend runs before the directory's.
    token = Client().post(
        "/api/v1/auth/token/",
        {"username": "alice", "password": PASSWORDS["alice"]},
        content_type="application/json",
    )
    assert token.status_code in (400, 401, 403), token.content
    assert "token" not in token.json()


def test_roles_follow_the_directory_at_each_sign_in(directory_login):
    client = csrf_client()
    sign_in(client, "carol", PASSWORDS["carol"])
    carol = signed_in_user(client)
    assert user_roles(carol) == [ADMINISTRATOR]
    assert carol.is_staff and not carol.is_superuser
    # A group that is not a role survives the mirroring.
    carol.groups.add(Group.objects.create(name="newsletter"))

    directory_login.modify(
        f"""\
dn: cn=it-admins,ou=groups,{S}
changetype: modify
delete: member
member: uid=carol,ou=people,{S}
-
add: member
member: uid=dave,ou=people,{S}

dn: cn=radiology,ou=groups,{S}
changetype: modify
add: member
member: uid=carol,ou=people,{S}
"""
    )
    client.post(reverse("logout"))
    client = csrf_client()
    sign_in(client, "carol", PASSWORDS["carol"])
    carol = signed_in_user(client)

    assert user_roles(carol) == [RADIOLOGIST]
    assert not carol.is_staff
    assert carol.groups.filter(name="newsletter").exists()


def test_local_accounts_keep_signing_in_and_are_never_taken_over(directory_login, user):
    impostor = csrf_client()
    response = sign_in(impostor, "sonographer", PASSWORDS["sonographer"])
    assert response.status_code == 200
    assert signed_in_user(impostor) is None

    client = csrf_client()
    assert sign_in(client, "sonographer", "pw-123456!").status_code == 302
    local = signed_in_user(client)
    assert local.pk == user.pk and local.has_usable_password()
    assert user_roles(local) == [STAFF]


def test_a_directory_session_ends_after_the_idle_timeout(directory_login, settings):
    client = csrf_client()
    sign_in(client, "dave", PASSWORDS["dave"])
    assert user_roles(signed_in_user(client)) == [STAFF]
    assert client.get(reverse("clinical:patient_list")).status_code == 200
    assert_idle_session_ends(client, settings)
    assert signed_in_user(client) is None


def test_an_unreachable_directory_refuses_directory_users_and_spares_local_ones(
    settings, user
):
    configure(settings, f"ldap://127.0.0.1:{slapd.free_port()}")
    client = csrf_client()
    response = sign_in(client, "alice", PASSWORDS["alice"])
    assert response.status_code == 200
    assert signed_in_user(client) is None

    assert sign_in(client, "sonographer", "pw-123456!").status_code == 302


def test_a_directory_outage_says_so_and_does_not_count_toward_lockout(
    settings, directory
):
    """Issue 18, finding 6: an outage showed "wrong password" and locked the account."""
    configure(settings, f"ldap://127.0.0.1:{slapd.free_port()}")
    client = csrf_client()
    for _ in range(settings.LOGIN_MAX_FAILURES + 1):
        response = sign_in(client, "alice", PASSWORDS["alice"])
        assert response.status_code == 200
        assert signed_in_user(client) is None
        text = response.content.decode()
        assert "The hospital directory cannot be reached right now" in text
        assert "Please enter a correct username and password" not in text
        assert "locked" not in text
    token = Client().post(
        "/api/v1/auth/token/",
        {"username": "alice", "password": PASSWORDS["alice"]},
        content_type="application/json",
    )
    assert token.status_code == 503, token.content
    assert "directory cannot be reached" in token.json()["error"]

    # The directory is back: the same person signs in at once, nothing was counted.
    configure(settings, directory.uri)
    response = sign_in(client, "alice", PASSWORDS["alice"])
    assert response.status_code == 302
    assert signed_in_user(client).username == "alice"
