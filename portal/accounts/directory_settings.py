"""The AUTH_LDAP_* settings of directory login, built from plain values.

portal/settings.py reads the LDAP_* environment variables and calls `directory_settings`
only when LDAP_SERVER_URI is set, so python-ldap is imported only where directory login is
wanted (it compiles against OpenLDAP and may be missing on a developer's machine). This
module must stay importable while settings load: no models, no django_auth_ldap.backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

# LDAP_GROUP_TYPE -> (django-auth-ldap group type class, default group filter).
GROUP_TYPES: dict[str, tuple[str, str]] = {
    "groupofnames": ("GroupOfNamesType", "(objectClass=groupOfNames)"),
    "nestedgroupofnames": ("NestedGroupOfNamesType", "(objectClass=groupOfNames)"),
    "groupofuniquenames": (
        "GroupOfUniqueNamesType",
        "(objectClass=groupOfUniqueNames)",
    ),
    "posixgroup": ("PosixGroupType", "(objectClass=posixGroup)"),
    "activedirectory": ("ActiveDirectoryGroupType", "(objectClass=group)"),
    "nestedactivedirectory": (
        "NestedActiveDirectoryGroupType",
        "(objectClass=group)",
    ),
}


def _ldap() -> Any:
    try:
        import ldap
        import ldap.dn
    except ImportError:
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI is set but python-ldap is not installed: install the "
            "OpenLDAP and SASL headers (Debian: libldap2-dev libsasl2-dev) and run "
            "`.venv/bin/pip install -r requirements-ldap.txt`"
        ) from None
    return ldap


def normalize_dn(dn: str) -> str:
    """A DN in one spelling (case and spaces), so group DNs compare as the directory does."""
    ldap = _ldap()
    try:
        return ldap.dn.dn2str(ldap.dn.str2dn(dn.strip())).lower()
    except ldap.DECODING_ERROR:
        raise ValueError(f"{dn!r} is not a distinguished name") from None


def parse_dn_list(name: str, raw: str) -> frozenset[str]:
    """Distinguished names separated by ';' (DNs contain commas), normalized."""
    dns = set()
    for part in raw.split(";"):
        if not part.strip():
            continue
        try:
            dns.add(normalize_dn(part))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {exc}") from None
    return frozenset(dns)


def _dn(name: str, value: str, *, required: bool) -> str:
    if not value.strip():
        if required:
            raise ImproperlyConfigured(
                f"{name} is required when LDAP_SERVER_URI is set"
            )
        return ""
    try:
        normalize_dn(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None
    return value.strip()


def _filter(name: str, value: str, *, needs_user: bool) -> str:
    value = value.strip()
    if not (value.startswith("(") and value.endswith(")")):
        raise ImproperlyConfigured(
            f"{name} must be an LDAP filter in parentheses, got {value!r}"
        )
    if needs_user and "%(user)s" not in value:
        raise ImproperlyConfigured(
            f"{name} must contain %(user)s where the sign-in name goes, got {value!r}"
        )
    return value


def directory_settings(
    *,
    server_uri: str,
    bind_dn: str,
    bind_password: str,
    user_search_base: str,
    user_filter: str,
    user_dn_template: str,
    group_search_base: str,
    group_type: str,
    group_filter: str,
    role_groups: Mapping[str, str],
    attribute_map: Mapping[str, str],
    start_tls: bool,
    timeout: int,
) -> dict[str, Any]:
    """Every AUTH_LDAP_* setting plus LDAP_ROLE_GROUPS, or ImproperlyConfigured.

    `role_groups` maps each role to the raw ';'-separated group DNs whose members get it.
    """
    ldap = _ldap()
    from django_auth_ldap import config

    if not server_uri.startswith(("ldap://", "ldaps://", "ldapi://")):
        raise ImproperlyConfigured(
            f"LDAP_SERVER_URI must start with ldap://, ldaps:// or ldapi://, "
            f"got {server_uri!r}"
        )
    if group_type not in GROUP_TYPES:
        raise ImproperlyConfigured(
            f"LDAP_GROUP_TYPE must be one of {', '.join(GROUP_TYPES)}, got {group_type!r}"
        )
    mapped = {
        role: parse_dn_list(f"LDAP_GROUP_{role.upper()}", raw)
        for role, raw in role_groups.items()
    }
    if not any(mapped.values()):
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI is set but no LDAP_GROUP_STAFF, LDAP_GROUP_RADIOLOGIST or "
            "LDAP_GROUP_ADMINISTRATOR names a directory group: nobody could be given a role"
        )
    group_class_name, default_group_filter = GROUP_TYPES[group_type]
    group_search = config.LDAPSearch(
        _dn("LDAP_GROUP_SEARCH_BASE", group_search_base, required=True),
        ldap.SCOPE_SUBTREE,
        _filter(
            "LDAP_GROUP_FILTER", group_filter or default_group_filter, needs_user=False
        ),
    )
    values: dict[str, Any] = {
        "AUTH_LDAP_SERVER_URI": server_uri,
        "AUTH_LDAP_BIND_DN": _dn("LDAP_BIND_DN", bind_dn, required=False),
        "AUTH_LDAP_BIND_PASSWORD": bind_password,
        "AUTH_LDAP_START_TLS": start_tls,
        # A directory that does not answer must not hold sign-in requests for minutes.
        "AUTH_LDAP_CONNECTION_OPTIONS": {
            ldap.OPT_NETWORK_TIMEOUT: timeout,
            ldap.OPT_TIMEOUT: timeout,
            ldap.OPT_REFERRALS: 0,
        },
        "AUTH_LDAP_GROUP_SEARCH": group_search,
        "AUTH_LDAP_GROUP_TYPE": getattr(config, group_class_name)(),
        "AUTH_LDAP_USER_ATTR_MAP": {
            field: attribute
            for field, attribute in attribute_map.items()
            if attribute.strip()
        },
        # Names and e-mail addresses follow the directory on every sign-in.
        "AUTH_LDAP_ALWAYS_UPDATE_USER": True,
        # Roles come from LDAP_ROLE_GROUPS (portal.accounts.directory), not from
        # directory-defined permissions or mirrored group names.
        "AUTH_LDAP_FIND_GROUP_PERMS": False,
        "AUTH_LDAP_MIRROR_GROUPS": False,
        "AUTH_LDAP_CACHE_TIMEOUT": 0,
        "LDAP_ROLE_GROUPS": mapped,
    }
    if user_dn_template.strip():
        if "%(user)s" not in user_dn_template:
            raise ImproperlyConfigured(
                f"LDAP_USER_DN_TEMPLATE must contain %(user)s, got {user_dn_template!r}"
            )
        values["AUTH_LDAP_USER_DN_TEMPLATE"] = user_dn_template.strip()
    else:
        values["AUTH_LDAP_USER_SEARCH"] = config.LDAPSearch(
            _dn(
                "LDAP_USER_SEARCH_BASE (or LDAP_USER_DN_TEMPLATE)",
                user_search_base,
                required=True,
            ),
            ldap.SCOPE_SUBTREE,
            _filter("LDAP_USER_FILTER", user_filter, needs_user=True),
        )
    return values


def roles_of(
    group_dns: Iterable[str], role_groups: Mapping[str, frozenset[str]]
) -> set[str]:
    """The roles whose mapped groups include one of `group_dns`."""
    member_of = set()
    for dn in group_dns:
        try:
            member_of.add(normalize_dn(dn))
        except ValueError:
            continue
    return {role for role, dns in role_groups.items() if member_of & dns}
