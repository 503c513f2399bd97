"""LDAP_* environment variables: off by default, and loud about bad values."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.portal.conftest import run_python

REPO_ROOT = Path(__file__).resolve().parents[3]

VALID = {
    "LDAP_SERVER_URI": "ldap://ldap.hospital.test",
    "LDAP_BIND_DN": "cn=portal,ou=services,dc=hospital,dc=test",
    "LDAP_BIND_PASSWORD": "secret",
    "LDAP_USER_SEARCH_BASE": "ou=people,dc=hospital,dc=test",
    "LDAP_GROUP_SEARCH_BASE": "ou=groups,dc=hospital,dc=test",
    "LDAP_GROUP_RADIOLOGIST": (
        "cn=radiology,ou=groups,dc=hospital,dc=test; "
        "CN=Breast Imaging, OU=Groups, DC=hospital, DC=test"
    ),
}

_PRINT = """
import json, portal.settings as s
print(json.dumps({
    "backends": s.AUTHENTICATION_BACKENDS,
    "ldap": sorted(k for k in dir(s) if k.startswith("AUTH_LDAP_")),
    "roles": {k: sorted(v) for k, v in getattr(s, "LDAP_ROLE_GROUPS", {}).items()},
    "search": getattr(getattr(s, "AUTH_LDAP_USER_SEARCH", None), "filterstr", ""),
}))
"""


def _settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_python("-c", _PRINT, env={"DEBUG": "true", **env}, drop=("LDAP_",))


def test_directory_login_is_off_without_a_server_uri():
    result = _settings({})
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert not any("directory" in backend for backend in loaded["backends"])
    assert loaded["ldap"] == []


def test_a_server_uri_adds_the_directory_after_the_lockout_backend():
    pytest.importorskip("ldap", reason="python-ldap is not installed")
    result = _settings(VALID)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    without = json.loads(_settings({}).stdout)["backends"]
    # Last: the lockout backend (first) refuses a locked name before the directory runs.
    assert loaded["backends"] == [
        *without,
        "portal.accounts.directory.DirectoryBackend",
    ]
    assert "AUTH_LDAP_BIND_DN" in loaded["ldap"]
    assert "(uid=%(user)s)" in loaded["search"]
    assert loaded["roles"] == {
        "administrator": [],
        "radiologist": [
            "cn=breast imaging,ou=groups,dc=hospital,dc=test",
            "cn=radiology,ou=groups,dc=hospital,dc=test",
        ],
        "staff": [],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"LDAP_SERVER_URI": "ldap.hospital.test"}, "must start with ldap://"),
        ({"LDAP_USER_SEARCH_BASE": ""}, "LDAP_USER_SEARCH_BASE"),
        ({"LDAP_USER_FILTER": "(uid=alice)"}, "must contain %(user)s"),
        ({"LDAP_USER_FILTER": "uid=%(user)s"}, "in parentheses"),
        ({"LDAP_GROUP_RADIOLOGIST": "radiology"}, "LDAP_GROUP_RADIOLOGIST"),
        ({"LDAP_GROUP_RADIOLOGIST": ""}, "no LDAP_GROUP_STAFF"),
        ({"LDAP_GROUP_TYPE": "openldap"}, "LDAP_GROUP_TYPE must be one of"),
        ({"LDAP_BIND_DN": "portal"}, "LDAP_BIND_DN"),
        ({"LDAP_TIMEOUT": "soon"}, "LDAP_TIMEOUT must be an integer"),
    ],
)
def test_bad_directory_settings_stop_the_start(change, message):
    pytest.importorskip("ldap", reason="python-ldap is not installed")
    result = _settings({**VALID, **change})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
