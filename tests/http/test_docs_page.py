"""/docs as a person sees it: headless Chromium renders the Swagger UI page of a real hostd process."""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from hostd_http.docs import openapi
from openapi_spec_validator import validate
from pydantic import BaseModel

from hostd import MLModel
from hostd.dataplane import DataPlane
from hostd.registry import Registry
from hostd.settings import HostSettings
from tests.support.browser import rendered_dom
from tests.support.e2e import DIABETES_FIELDS, IRIS_FIELDS, REAL_MODELS

#: The fields each real model's request body shows on the page.
INPUT_FIELDS = {"iris_model": IRIS_FIELDS, "digits_model": ["image"], "diabetes_model": DIABETES_FIELDS}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
Start = Callable[..., Any]


class Page(HTMLParser):
    """The text an element shows (its descendants' text, joined), by id and by class."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.open: list[tuple[str, dict[str, str | None], list[str]]] = []
        self.by_id: dict[str, str] = {}
        self.classes: dict[str, list[str]] = {}  # id -> its classes
        self.by_class: dict[str, list[str]] = {}
        self.feed(dom)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.open.append((tag, dict(attrs), []))

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            name, attrs, parts = self.open.pop()
            text, classes = "".join(parts), (attrs.get("class") or "").split()
            if self.open:
                self.open[-1][2].append(text)
            if element_id := attrs.get("id"):
                self.by_id[element_id], self.classes[element_id] = text, classes
            for name_of_class in classes:
                self.by_class.setdefault(name_of_class, []).append(text)
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1][2].append(data)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_docs_page_renders_every_model_in_chromium(start_hostd: Start, tmp_path: Path) -> None:
    server = start_hostd({"models": REAL_MODELS})
    spec = httpx.get(f"{server.url}/openapi.json", timeout=5).json()
    validate(spec)  # as the version it declares
    for name, fields in INPUT_FIELDS.items():
        # What a person gets who follows a link to one model's operation: the page, with it open.
        dom = rendered_dom(f"{server.url}/docs#/models/predict_{name}", tmp_path / "chromium")
        assert "Unable to render" not in dom
        page = Page(dom)
        for other in INPUT_FIELDS:
            summary = page.by_id.get(f"operations-models-predict_{other}", "")
            assert "POST" in summary and f"/api/models/{other}/prediction" in summary, f"{other} not on the page"
        assert "is-open" in page.classes[f"operations-models-predict_{name}"]
        [request_body] = page.by_class["opblock-section-request-body"]  # the open operation's only
        assert "application/json" in request_body
        for field in fields:
            assert f'"{field}"' in request_body, f"{name}'s request body does not show {field}"


def length_input() -> type[BaseModel]:
    class Input(BaseModel):  # a name the next schema has too, as two model packages may
        length: float | None = None
        unit: Literal["cm"] = "cm"

    return Input


def count_input() -> type[BaseModel]:
    class Input(BaseModel):
        count: int

    return Input


Length, Count = length_input(), count_input()


class MeasureModel(MLModel):
    """An input schema only OpenAPI 3.1 can say (null, const) in a class named as another model's."""

    display_name = "Measure"
    description = "Counts a length"
    qualified_name = "measure"
    version = "1.0.0"
    input_schema: type[BaseModel] = Length
    output_schema: type[BaseModel] = Count

    def predict(self, data: Any) -> Any:
        return Count(count=1)


class CountModel(MeasureModel):
    qualified_name = "count"
    input_schema = Count
    output_schema = Length


def test_openapi_validates_with_schemas_only_3_1_can_say() -> None:
    models = [{"class_path": f"tests.http.test_docs_page:{cls}"} for cls in ("MeasureModel", "CountModel")]
    registry = Registry.from_settings(HostSettings.model_validate({"models": models}))
    try:
        spec = openapi(DataPlane(registry), "Docs", "3.1 schemas")
    finally:
        registry.close()
    assert spec["openapi"] == "3.1.0"
    validate(spec)
    schemas = spec["components"]["schemas"]

    def request_schema(name: str) -> dict[str, Any]:
        post = spec["paths"][f"/api/models/{name}/prediction"]["post"]
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return dict(schemas[ref.rsplit("/", 1)[1]])

    # Two classes named Input: two components, each model's request body refers to its own.
    assert set(request_schema("measure")["properties"]) == {"length", "unit"}
    assert set(request_schema("count")["properties"]) == {"count"}
    assert {"type": "null"} in request_schema("measure")["properties"]["length"]["anyOf"]
