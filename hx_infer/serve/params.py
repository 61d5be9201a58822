"""What one request asks for: the query string and form fields -> a checked RemoveParams.

hx's own parameters are `output`, `background`, `format`, `refine` and `png_compression`, named
and valued as `hx-infer run`'s options. rembg's server form is understood too (`om=true`: only the mask,
`bgc=R,G,B,A`: the cutout on a colour, as PNG), so its clients work unchanged; its other fields
(model, a, af, ab, ae, ppm, extras) choose rembg models and post-processing that hx has no
counterpart for, and are accepted and ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from PIL import ImageColor

from ..compose import Background, parse_background
from ..io.png_choices import DEFAULT_PNG_COMPRESSION, PNG_COMPRESSIONS

OUTPUTS = ("rgba", "alpha", "composite")
FORMATS = ("png", "jpeg")
REFINES = ("none", "guided")
HX_PARAMS = ("output", "background", "format", "refine", "png_compression")
REMBG_PARAMS = ("om", "bgc")
REMBG_IGNORED = ("model", "a", "af", "ab", "ae", "ppm", "extras")
# Colours only: a path here would let any client read files of the server's machine.
_HEX = re.compile(r"#?(?:[0-9a-f]{3}|[0-9a-f]{6})", re.IGNORECASE)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class RequestError(Exception):
    """A request the server will not answer with an image: HTTP status, a kind for the metrics
    (empty_body, not_image, bad_image, body_too_large, too_many_pixels, bad_parameter, ...) and a
    one-line message for the client."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def bad(message: str) -> RequestError:
    return RequestError(400, "bad_parameter", message)


@dataclass(frozen=True)
class RemoveParams:
    output: str  # rgba, alpha or composite
    background: Background  # behind the person for composite
    format: str  # png or jpeg
    refine: str  # none or guided
    png_compression: str = DEFAULT_PNG_COMPRESSION  # fast, balanced or small, as run's --png-compression

    @property
    def media_type(self) -> str:
        return "image/jpeg" if self.format == "jpeg" else "image/png"


def parse_params(pairs: Iterable[tuple[str, str]], target: str = "alpha") -> RemoveParams:
    """(name, value) pairs from the query string and the form's text fields -> RemoveParams.

    target: the model's ("rgb" models paint the person on white: composite on white only).
    Raises RequestError(400) naming the parameter.
    """
    given: dict[str, str] = {}
    for name, value in pairs:
        if name in REMBG_IGNORED:
            continue
        if name not in HX_PARAMS + REMBG_PARAMS:
            raise bad(f"unknown parameter {name!r}; use {', '.join(HX_PARAMS)} (or rembg's om, bgc)")
        if name in given:
            raise bad(f"parameter {name!r} given twice")
        given[name] = value.strip()

    output = given.get("output", "rgba" if target == "alpha" else "composite").lower()  # rgb: its only kind
    if output not in OUTPUTS:
        raise bad(f"output={given['output']!r}: choose from {', '.join(OUTPUTS)}")
    background_spec = given.get("background", "white")
    default_format = "jpeg" if output == "composite" else "png"
    rembg = [name for name in REMBG_PARAMS if name in given]
    if rembg and "output" in given:
        raise bad(f"give output= or rembg's {rembg[0]}=, not both")
    if "om" in given and _flag(given["om"], "om"):
        output = "alpha"
    elif "bgc" in given:
        if "background" in given:
            raise bad("give background= or rembg's bgc=, not both")
        output, background_spec = _rembg_colour(given["bgc"])
        default_format = "png"  # rembg always answers PNG

    background = _colour(background_spec)

    fmt = given.get("format", default_format).lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in FORMATS:
        raise bad(f"format={given['format']!r}: choose from png, jpeg")
    if fmt == "jpeg" and output != "composite":
        raise bad(f"format=jpeg: only output=composite is written as JPEG (output={output} is PNG)")
    refine = given.get("refine", "none").lower()
    if refine not in REFINES:
        raise bad(f"refine={given['refine']!r}: choose from {', '.join(REFINES)}")
    png_compression = given.get("png_compression", DEFAULT_PNG_COMPRESSION).lower()
    if png_compression not in PNG_COMPRESSIONS:
        raise bad(f"png_compression={given['png_compression']!r}: choose from {', '.join(PNG_COMPRESSIONS)}")
    if target == "rgb":
        _check_rgb_target(output, background, refine)
    return RemoveParams(output, background, fmt, refine, png_compression)


def _colour(spec: str) -> Background:
    """A CSS colour name, #RRGGBB / #RGB, or the same hex digits without '#' (awkward in a URL)."""
    named = spec.isalpha() and spec.lower() in ImageColor.colormap
    if not (named or _HEX.fullmatch(spec)):
        raise bad(f"background={spec!r}: use a CSS colour name or #RRGGBB (write # as %23 in a URL)")
    return parse_background(spec if named or spec.startswith("#") else "#" + spec)


def _flag(value: str, name: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise bad(f"{name}={value!r}: use true or false")


def _rembg_colour(value: str) -> tuple[str, str]:
    """rembg's bgc=R,G,B,A -> (output, background). hx composes on opaque colours: A=255 is the
    composite, A=0 the plain cutout; a half-transparent colour is refused rather than faked."""
    parts = value.split(",")
    try:
        r, g, b, a = (int(p) for p in parts)
    except ValueError:
        raise bad(f"bgc={value!r}: use R,G,B,A, four integers 0-255") from None
    if not all(0 <= c <= 255 for c in (r, g, b, a)):
        raise bad(f"bgc={value!r}: use R,G,B,A, four integers 0-255")
    if a not in (0, 255):
        raise bad(f"bgc={value!r}: alpha must be 255 (opaque colour) or 0 (no background)")
    return ("composite" if a == 255 else "rgba"), f"#{r:02x}{g:02x}{b:02x}"


def _check_rgb_target(output: str, background: Background, refine: str) -> None:
    if output != "composite":
        raise bad(f"output={output}: this model paints the person on white (target rgb) and makes "
                  f"only output=composite")
    if background.color != (255, 255, 255):
        raise bad("background: this model paints the person on white (target rgb); it cannot use another")
    if refine != "none":
        raise bad("refine=guided: this model makes no matte to refine (target rgb)")
