"""The schema and the tool that the exllamav2 constrained-decoding tests use, on CPU (the stand-in) and on
the GPU alike. Integers, booleans and enums only: a random-weights model ends them soon, where it would
fill a free string until max_tokens."""

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"},
                                           "color": {"enum": ["red", "green", "blue"]}},
          "required": ["n", "ok", "color"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["C", "F"]}, "days": {"type": "integer"}},
    "required": ["unit", "days"]}}}
