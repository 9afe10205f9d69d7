"""Lambda events as AWS sends them to a function, and its replies read back as a client would see them.

The shapes follow AWS's documented sample events: API Gateway REST API proxy integration (payload
format 1.0), HTTP API (payload format 2.0) and Lambda function URLs (2.0, without pathParameters or
stageVariables).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

Kind = Literal["rest", "http", "url"]
KINDS: tuple[Kind, ...] = ("rest", "http", "url")

ACCOUNT = "123456789012"
REGION = "us-east-1"
API_ID = "1234567890"
URL_ID = "a7xbnsle5gkxlt4ud2c3ebd7vq0fmhxb"  # function URL ids are 32 characters
STAGE = "prod"  # REST API stage: in requestContext.path, not in the event's path
REQUEST_TIME = "09/Apr/2015:12:34:56 +0000"
REQUEST_EPOCH_MS = 1428582896000
SOURCE_IP = "203.0.113.10"
USER_AGENT = "python-httpx/0.27.0"
TRACE_ID = "Root=1-5e66d96f-7491f09xmpl79d18acf3d050"


@dataclass(frozen=True)
class Context:
    """The fields of the LambdaContext the Python runtime passes a handler."""

    function_name: str = "hostd"
    function_version: str = "$LATEST"
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:hostd"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    log_group_name: str = "/aws/lambda/hostd"
    log_stream_name: str = "2024/01/01/[$LATEST]abcdef0123456789"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def event(kind: Kind, method: str, path: str, *, body: bytes | str | None = None,
          query: dict[str, list[str]] | None = None, headers: dict[str, str] | None = None,
          base64_body: bool = False) -> dict[str, Any]:
    """An event of ``kind`` for ``method path``; a ``body`` gets a JSON content type unless ``headers`` say."""
    raw = body.encode() if isinstance(body, str) else body
    sent = dict(headers or {})
    if raw is not None:
        sent.setdefault("content-type", "application/json")
        sent["content-length"] = str(len(raw))
    encoded = None if raw is None else base64.b64encode(raw).decode() if base64_body else raw.decode()
    build = {"rest": rest_api_event, "http": http_api_event, "url": function_url_event}[kind]
    return build(method, path, encoded, base64_body, query or {}, sent)


def rest_api_event(method: str, path: str, body: str | None, is_base64: bool, query: dict[str, list[str]],
                   headers: dict[str, str]) -> dict[str, Any]:
    """API Gateway REST API, Lambda proxy integration on ``/{proxy+}`` (payload format 1.0)."""
    host = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
    # REST APIs keep the client's header case.
    sent = {
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",
        "CloudFront-Forwarded-Proto": "https",
        "CloudFront-Is-Desktop-Viewer": "true",
        "CloudFront-Viewer-Country": "US",
        "Host": host,
        "User-Agent": USER_AGENT,
        "Via": "1.1 08f323deadbeefa7af34d5feb414ce27.cloudfront.net (CloudFront)",
        "X-Amz-Cf-Id": "cDehVQoZnx43VYQb9j2-nvCh-9z396Uhbp027Y2JvkCPNLmGJHqlaA==",
        "X-Amzn-Trace-Id": TRACE_ID,
        "X-Forwarded-For": f"{SOURCE_IP}, 54.240.196.186",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **{_title(name): value for name, value in headers.items()},
    }
    resource = "/{proxy+}"
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": sent,
        "multiValueHeaders": {name: [value] for name, value in sent.items()},
        # API Gateway sends null, not {}, when there are none.
        "queryStringParameters": {key: values[-1] for key, values in query.items()} or None,
        "multiValueQueryStringParameters": dict(query) or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT,
            "resourceId": "123456",
            "stage": STAGE,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": REQUEST_TIME,
            "requestTimeEpoch": REQUEST_EPOCH_MS,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "accessKey": None,
                "sourceIp": SOURCE_IP,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": USER_AGENT,
                "user": None,
            },
            "path": f"/{STAGE}{path}",
            "resourcePath": resource,
            "httpMethod": method,
            "apiId": API_ID,
            "protocol": "HTTP/1.1",
            "domainName": host,
            "domainPrefix": API_ID,
            "extendedRequestId": "BQGojGkyoAMFZ8g=",
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def http_api_event(method: str, path: str, body: str | None, is_base64: bool, query: dict[str, list[str]],
                   headers: dict[str, str]) -> dict[str, Any]:
    """API Gateway HTTP API, route ``ANY /{proxy+}`` on the ``$default`` stage (payload format 2.0)."""
    event = _v2_event(method, path, body, is_base64, query, headers, f"{API_ID}.execute-api.{REGION}.amazonaws.com",
                      "ANY /{proxy+}")
    event["pathParameters"] = {"proxy": path.lstrip("/")}
    event["stageVariables"] = {"environment": "production"}
    return event


def function_url_event(method: str, path: str, body: str | None, is_base64: bool, query: dict[str, list[str]],
                       headers: dict[str, str]) -> dict[str, Any]:
    """A Lambda function URL request: format 2.0, but always ``$default``, and no path or stage variables."""
    event = _v2_event(method, path, body, is_base64, query, headers, f"{URL_ID}.lambda-url.{REGION}.on.aws",
                      "$default")
    event["requestContext"]["authorizer"] = {"iam": {
        "accessKey": "AKIAIOSFODNN7EXAMPLE", "accountId": ACCOUNT, "callerId": "AIDACKCEVSQ6C2EXAMPLE",
        "cognitoIdentity": None, "principalOrgId": None, "userArn": f"arn:aws:iam::{ACCOUNT}:user/caller",
        "userId": "AIDACKCEVSQ6C2EXAMPLE",
    }}
    return event


def _v2_event(method: str, path: str, body: str | None, is_base64: bool, query: dict[str, list[str]],
              headers: dict[str, str], domain: str, route_key: str) -> dict[str, Any]:
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": urlencode(query, doseq=True),
        "cookies": ["session=c2Vzc2lvbg", "theme=dark"],
        # Payload 2.0 lower-cases header names and joins repeated headers with commas.
        "headers": {
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "host": domain,
            "user-agent": USER_AGENT,
            "x-amzn-trace-id": TRACE_ID,
            "x-forwarded-for": SOURCE_IP,
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **{name.lower(): value for name, value in headers.items()},
        },
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": SOURCE_IP,
                     "userAgent": USER_AGENT},
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": route_key,
            "stage": "$default",
            "time": REQUEST_TIME,
            "timeEpoch": REQUEST_EPOCH_MS,
        },
        "isBase64Encoded": is_base64,
    }
    if query:
        event["queryStringParameters"] = {key: ",".join(values) for key, values in query.items()}
    if body is not None:  # 2.0 leaves body out rather than sending null
        event["body"] = body
    return event


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


@dataclass(frozen=True)
class Reply:
    """A function's proxy response as the client receives it."""

    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def reply(response: dict[str, Any]) -> Reply:
    """Read a proxy response of either payload format (1.0: multiValueHeaders; 2.0: cookies)."""
    assert isinstance(response["statusCode"], int), response
    headers = {name.lower(): str(value) for name, value in (response.get("headers") or {}).items()}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers[name.lower()] = ", ".join(str(value) for value in values)
    body = response.get("body") or ""
    assert isinstance(body, str), response
    raw = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
    return Reply(response["statusCode"], headers, raw)
