"""Schema preparation for constrained decoding, before llguidance sees a JSON schema: closing objects to
undeclared keys (closed()), in one linear pass with limits on depth, size and time, and refusing a $ref loop
that no answer could match. Pure Python (no llguidance): the gateway may call it too."""
import contextlib
import contextvars
import time

MAX_SCHEMA_DEPTH = 32  # schemas nested in a schema (OpenAI's strict mode allows 10)
MAX_SCHEMA_NODES = 20_000  # JSON values in one schema, its keys, enums and defaults counted
MAX_SCHEMA_SECONDS = 2.0  # to prepare one: the walk below, then llguidance's own check
# Keywords whose value is a schema, a list of schemas, or a map of names to schemas (JSON Schema 2020-12
# and draft 7); every other value is data (enum, const, default...), copied as it is.
_SCHEMA_KEYS = frozenset(("items", "additionalProperties", "additionalItems", "contains", "not", "if", "then", "else",
                          "propertyNames", "unevaluatedProperties", "unevaluatedItems"))
_LIST_KEYS = frozenset(("allOf", "anyOf", "oneOf", "prefixItems", "items"))
_MAP_KEYS = frozenset(("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"))
_SAME_PLACE = ("allOf", "anyOf", "oneOf")  # members that match at the schema's own place in the text (with $ref)


_request = contextvars.ContextVar("schema_preparation", default=(None, None))  # (cancel, deadline)


@contextlib.contextmanager
def preparing(cancel=None):
    """One request's schema preparation: every closed() inside shares one deadline (MAX_SCHEMA_SECONDS from
    now, all its tools together) and stops with a SchemaError once `cancel` (an Event) is set."""
    token = _request.set((cancel, time.monotonic() + MAX_SCHEMA_SECONDS))
    try:
        yield
    finally:
        _request.reset(token)


def check_time():
    """A SchemaError if the current preparation's deadline has passed or its client has left."""
    _Walk().check_time()


class SchemaError(ValueError):
    """A schema that is refused before any work on it: too deep, too big, too slow, or a $ref loop."""


class _Walk:
    """One linear pass over a schema: each value is visited once, against the limits and a deadline
    (checked every 256 values, with `cancel`, an Event set when the client has left)."""

    def __init__(self):
        self.nodes, self.schemas, self.next_check = 0, [], 256
        self.cancel, self.deadline = _request.get()
        if self.deadline is None:
            self.deadline = time.monotonic() + MAX_SCHEMA_SECONDS

    def tick(self, n=1):
        self.nodes += n
        if self.nodes > MAX_SCHEMA_NODES:
            raise SchemaError(f"The schema has over {MAX_SCHEMA_NODES} values (keys, enum members...): "
                              f"send a smaller one.")
        if self.nodes >= self.next_check:
            self.next_check += 256
            self.check_time()

    def check_time(self):
        if self.cancel is not None and self.cancel.is_set():
            raise SchemaError("The client left while its schema was being prepared.")
        if time.monotonic() > self.deadline:
            raise SchemaError(f"The schema took over {MAX_SCHEMA_SECONDS:g} s to prepare: send a simpler one.")

    def schema(self, s, depth):
        """`s` with every object that declares `properties` and says nothing of others closed to them."""
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(f"The schema nests deeper than {MAX_SCHEMA_DEPTH} levels: flatten it.")
        if not isinstance(s, dict):
            self.data(s)  # true/false, or something llguidance will refuse
            return s
        self.schemas.append(s)
        out = {}
        for k, v in s.items():
            self.tick()
            if k in _MAP_KEYS and isinstance(v, dict):
                self.tick(len(v))
                out[k] = {name: self.schema(sub, depth + 1) for name, sub in v.items()}
            elif k in _LIST_KEYS and isinstance(v, list):
                out[k] = [self.schema(sub, depth + 1) for sub in v]
            elif k in _SCHEMA_KEYS:
                out[k] = self.schema(v, depth + 1)
            else:
                self.data(v)
                out[k] = v
        if isinstance(s.get("properties"), dict):
            out.setdefault("additionalProperties", False)
        return out

    def data(self, value):
        """Counts a data value's parts (no recursion: its nesting is only bounded by the body's size)."""
        stack = [value]
        while stack:
            v = stack.pop()
            self.tick()
            if isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)


def _pointer(root, ref):
    """The schema a local "$ref" ("#", "#/$defs/a"...) points to; None for another document or no such place."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _ref_loop(root, schemas) -> bool:
    """Whether a schema reaches itself through $ref, allOf, anyOf or oneOf alone: a loop that never gets to
    a value (llguidance would compile it to a grammar that allows nothing: an empty answer)."""
    ids = {id(s) for s in schemas}

    def same_place(s):
        out = [_pointer(root, s["$ref"])] if "$ref" in s else []
        out += [m for k in _SAME_PLACE if isinstance(s.get(k), list) for m in s[k]]
        return [m for m in out if isinstance(m, dict) and id(m) in ids]

    state = {}  # id -> 1 on the current path, 2 done
    for start in schemas:
        if id(start) in state:
            continue
        stack = [(start, iter(same_place(start)))]
        state[id(start)] = 1
        while stack:
            node, todo = stack[-1]
            nxt = next(todo, None)
            if nxt is None:
                state[id(node)] = 2
                stack.pop()
            elif state.get(id(nxt)) == 1:
                return True
            elif id(nxt) not in state:
                state[id(nxt)] = 1
                stack.append((nxt, iter(same_place(nxt))))
    return False


def closed(schema):
    """The schema with every object that declares `properties` but says nothing of others closed to them
    (additionalProperties: false, as OpenAI's strict mode requires): the model writes the declared keys
    only, instead of inventing more until max_tokens (what a weak model does when it may). One pass,
    linear in the schema's size; SchemaError past the limits above (the time: see preparing()), or for a
    $ref loop."""
    walk = _Walk()
    out = walk.schema(schema, 0)
    if _ref_loop(schema, walk.schemas):
        raise SchemaError("The schema refers to itself through $ref (or allOf/anyOf/oneOf) without ever "
                          "describing a value, so no answer can match it: break the loop.")
    return out
