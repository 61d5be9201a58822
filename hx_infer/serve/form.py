"""A request body -> (the image file's bytes, RemoveParams).

The image is the whole body, whatever its Content-Type (`curl --data-binary @photo.jpg` says
application/x-www-form-urlencoded), unless the body is multipart/form-data, as rembg's clients
and HTML forms send it: then it is the field `file`, and the form's other fields are parameters
like the query string's. Parsed by python-multipart, all in memory (the body is already bounded).
"""
from __future__ import annotations

from python_multipart import FormParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from .params import RemoveParams, RequestError, bad, parse_params

FILE_FIELD = "file"


def image_and_params(body: bytes, content_type: str, query: list[tuple[str, str]],
                     target: str) -> tuple[bytes, RemoveParams]:
    if not body:  # first: an empty multipart body is empty, not a form without its field
        raise _empty_body()
    pairs = list(query)
    image = body
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        image, fields = _multipart(body, content_type)
        pairs += fields
    params = parse_params(pairs, target)
    if not image:  # the field `file`, sent empty
        raise _empty_body()
    return image, params


def _empty_body() -> RequestError:
    return RequestError(400, "empty_body", "empty body: send the image as the request body, "
                                           f"or as the multipart field {FILE_FIELD!r}")


def _multipart(body: bytes, content_type: str) -> tuple[bytes, list[tuple[str, str]]]:
    files: list[tuple[str, bytes]] = []
    fields: list[tuple[str, str]] = []

    def on_field(field) -> None:
        name = (field.field_name or b"").decode("utf-8", "replace")
        value = field.value or b""
        if name == FILE_FIELD:  # `curl -F file=<photo.jpg` sends it as a plain field
            files.append((name, value))
        else:
            fields.append((name, value.decode("utf-8", "replace")))

    def on_file(file) -> None:
        file.file_object.seek(0)
        files.append(((file.field_name or b"").decode("utf-8", "replace"), file.file_object.read()))

    # In memory however large: the body is already in memory and under --max-body-mb.
    config = {"MAX_MEMORY_FILE_SIZE": len(body) + 1, "MAX_BODY_SIZE": len(body) + 1}
    ended: list[bool] = []  # python-multipart says nothing of a body that stops part-way
    try:
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        parser = FormParser("multipart/form-data", on_field, on_file, on_end=lambda: ended.append(True),
                            boundary=boundary, config=config)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise RequestError(400, "bad_form", f"multipart body: {first}") from None
    if not ended:  # else the part it stops in (often the photo) is dropped, and "no field 'file'" misleads
        raise RequestError(400, "truncated_form", "multipart body cut short: it ends before its closing boundary")
    others = sorted({name for name, _ in files if name != FILE_FIELD})
    if others:
        raise bad(f"multipart file field {others[0]!r}: send the image as {FILE_FIELD!r}")
    images = [data for name, data in files if name == FILE_FIELD]
    if len(images) > 1:
        raise bad(f"multipart field {FILE_FIELD!r} given {len(images)} times; send one image per request")
    if not images:
        raise bad(f"multipart form has no field {FILE_FIELD!r}")
    return images[0], fields
