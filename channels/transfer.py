"""Bodies on text-only transports: how a binary body travels as base64, and comes back.

SQS (and whatever carries an SQS message on, such as the event Lambda is
invoked with) holds a body as text. qchan's SQS adapter sends a body that is
not such text base64-encoded, with the String attribute
`ContentTransferEncoding=base64`; `decode_body` undoes that wherever such a
body is read, so every reader gets the bytes the producer sent.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

__all__ = ["BASE64", "ENCODING_ATTR", "decode_body"]

#: Marker attribute of a base64-encoded body, and its only value.
ENCODING_ATTR = "ContentTransferEncoding"
BASE64 = "base64"


def decode_body(text: str, attributes: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """The body bytes and attributes a producer sent, from a text body and its attributes.

    A body marked base64 is decoded and the marker removed. One that is not
    valid base64 is left as it is, marker included: decoding it for its type
    then fails, and the failure shows the raw text and attributes.
    """
    attrs = dict(attributes)
    if attrs.get(ENCODING_ATTR) == BASE64:
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            del attrs[ENCODING_ATTR]
            return body, attrs
    return text.encode("utf-8"), attrs
