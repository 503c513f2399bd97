"""The portal's three roles, as Django groups holding model permissions.

- staff: register patients and studies, upload images, follow analyses, download reports.
- radiologist: see everything staff sees, plus the worklist, review and sign-off, the
  agreement monitor, and the biopsy outcome of a study or of one of its lesions. Does not
  register patients or upload.
- administrator: users and roles, the admin site, the audit trail and the agreement
  monitor, the site's calibration (fit, activate, roll back) and the model registry
  (promote, roll back, shadow); reads clinical records but neither uploads nor signs.

Views check permissions (never group names) with `require_permissions`, so a site can
reshape a role in the admin without touching code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

STAFF = "staff"
RADIOLOGIST = "radiologist"
ADMINISTRATOR = "administrator"
ROLES = (STAFF, RADIOLOGIST, ADMINISTRATOR)

# What every reader of clinical records gets.
_READ_CLINICAL = (
    "clinical.view_patient",
    "clinical.view_study",
    "clinical.view_scan",
    "analyses.view_analysis",
    "review.view_review",
)

ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    STAFF: (
        *_READ_CLINICAL,
        "clinical.add_patient",
        "clinical.add_study",
        "clinical.add_scan",
        "analyses.change_analysis",  # retry a failed analysis
    ),
    RADIOLOGIST: (
        *_READ_CLINICAL,
        "review.add_review",
        "review.change_review",
        "review.sign_review",
        "review.view_worklist",
        "review.view_agreement",
        "clinical.record_pathology",
    ),
    ADMINISTRATOR: (
        *_READ_CLINICAL,
        "review.view_agreement",
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
        "auth.delete_user",
        "auth.view_group",
        "auth.add_group",
        "auth.change_group",
        "auth.delete_group",
        "audit.view_accessrecord",
        "auditlog.view_logentry",
        # Site calibration: fit, activate, roll back (only administrators).
        "registry.view_sitecalibration",
        "registry.add_sitecalibration",
        "registry.activate_sitecalibration",
        # Model versions: see cards and comparisons, promote, roll back, shadow.
        "registry.view_modelversion",
        "registry.promote_modelversion",
    ),
}


def ensure_roles(apps: Any) -> None:
    """Create the groups and give each exactly its permissions (idempotent).

    `apps` is the app registry: the historical one in a migration, the real one after
    migrate and flush (post_migrate), so the groups exist whatever created the database.
    """
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, names in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        wanted = []
        for name in names:
            app_label, codename = name.split(".", 1)
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is None:
                # Not created yet (an app migrated later); post_migrate adds it.
                continue
            wanted.append(permission)
        group.permissions.set(wanted)


def assign_role(user: Any, role: str) -> None:
    """Put a user in a role's group; administrators also get into the admin site."""
    from django.contrib.auth.models import Group

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    user.groups.add(Group.objects.get(name=role))
    if role == ADMINISTRATOR and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])


def user_roles(user: Any) -> list[str]:
    if not user.is_authenticated:
        return []
    return [
        name for name in user.groups.values_list("name", flat=True) if name in ROLES
    ]


ViewFunc = TypeVar("ViewFunc", bound=Callable[..., HttpResponse])


def require_permissions(*permissions: str) -> Callable[[ViewFunc], ViewFunc]:
    """Let a view run only for a user holding every one of `permissions`.

    Anonymous users go to the login page; signed-in users without them get 403.
    """

    def decorator(view: ViewFunc) -> ViewFunc:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            if not user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not user.has_perms(permissions):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        wrapped.required_permissions = tuple(permissions)  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorator


def has_all(user: Any, permissions: Iterable[str]) -> bool:
    return user.is_authenticated and user.has_perms(tuple(permissions))
