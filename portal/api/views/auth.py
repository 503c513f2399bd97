"""API tokens: exchanged for a portal username and password, revoked by their holder.

Tokens are django-rest-knox's: the key is shown once, in the answer that issues it, and
stored only as a digest; it expires (API_TOKEN_TTL_HOURS) and goes with a password change
or a deactivation (portal/accounts/tokens.py)."""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import OpenApiResponse, extend_schema
from knox.models import AuthToken
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from portal.accounts.lockout import DIRECTORY_UNAVAILABLE, directory_unavailable
from portal.accounts.tokens import token_issue, tokens_revoke
from portal.api.permissions import needs
from portal.api.serializers import (
    TokenRequestSerializer,
    TokenSerializer,
)
from portal.api.views.base import PortalAPIView, ServiceUnavailable


class TokenView(APIView):
    """Exchange a portal username and password for an API token."""

    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = (AnonRateThrottle,)

    def get_authenticate_header(self, request: Request) -> str:
        return "Token"  # wrong credentials are a 401 that names the scheme

    @extend_schema(
        request=TokenRequestSerializer,
        responses={
            200: TokenSerializer,
            401: OpenApiResponse(description="wrong credentials"),
        },
        summary="Get an API token",
        description="Send it as `Authorization: Token <key>` until `expiry` (ISO 8601, "
        "API_TOKEN_TTL_HOURS after it was issued). Each call issues a new token; the "
        "portal keeps only a digest of it, so a lost key cannot be shown again: ask for "
        "another. Tokens end early with DELETE /api/v1/auth/token/revoke/, a password "
        "change or the account's deactivation.",
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(
            request._request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None and directory_unavailable(request._request):
            raise ServiceUnavailable(DIRECTORY_UNAVAILABLE)
        if user is None or not user.is_active:
            # The same answer for a wrong name, a wrong password and a locked account.
            raise exceptions.AuthenticationFailed(
                "Wrong username or password (repeated failures lock the account for a while)"
            )
        instance, key = token_issue(user=user)
        return Response({"token": key, "expiry": instance.expiry})


class TokenRevokeView(PortalAPIView):
    required_permissions = needs(DELETE=())

    @extend_schema(
        responses={204: None},
        summary="Revoke the token used for this call",
        description="Signed in with a session instead of a token: revokes every token "
        "of the account.",
    )
    def delete(self, request: Request) -> Response:
        if isinstance(request.auth, AuthToken):
            request.auth.delete()
        else:
            tokens_revoke(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
