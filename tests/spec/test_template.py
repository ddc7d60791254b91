"""Tests for meshnode.spec.template: Go text/template (missingkey=error) on a string map."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.errors import MeshnodeError
from meshnode.spec.template import TemplateError, render_template

VARS = {"name": "Ada", "empty": "", "num": "42", "word": "abc"}


def render(text: str, variables: dict[str, str] | None = None) -> str:
    return render_template(text, VARS if variables is None else variables)


def error_of(text: str, variables: dict[str, str] | None = None) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        render(text, variables)
    return info.value


# --------------------------------------------------------------------------
# Text, fields and the dot


def test_text_outside_actions_is_copied_verbatim() -> None:
    text = "a } b { c }} d {x}\n\tü -}} {- \r\n"
    assert render(text) == text


def test_field_access_on_the_dot() -> None:
    assert render("hello {{.name}}, {{.word}}!") == "hello Ada, abc!"


def test_dot_alone_renders_the_map_with_sorted_keys() -> None:
    assert render("{{.}}", {"b": "2", "a": "1", "c": ""}) == "map[a:1 b:2 c:]"
    assert render("{{.}}", {}) == "map[]"


def test_dollar_is_the_root_data() -> None:
    assert render('{{index $ "name"}}|{{$.word}}|{{with .num}}{{.}}-{{$.name}}{{end}}') == (
        "Ada|abc|42-Ada"
    )


def test_chained_field_on_a_string_is_an_error() -> None:
    err = error_of("first line\n  {{.name.first}}")
    assert (err.line, err.column) == (2, 10)
    assert err.reason == "can't evaluate field first in type string"


def test_missing_key_is_an_error_that_names_the_key() -> None:
    err = error_of("a: 1\nb: {{.nope}}\n")
    assert (err.line, err.column) == (2, 6)
    assert err.reason == 'no value for variable "nope" (map has no entry for key "nope")'


def test_index_of_a_missing_key_is_the_empty_string() -> None:
    assert render('[{{index . "nope"}}]') == "[]"
    assert render('[{{index . "name"}}]') == "[Ada]"


def test_index_of_a_string_gives_the_byte() -> None:
    assert render('{{index "abc" 1}} {{index .word 0 | printf "%c"}}') == "98 a"


def test_field_on_a_parenthesised_value() -> None:
    err = error_of('{{(index . "name").x}}')
    assert (err.line, err.column) == (1, 19)
    assert err.reason == "can't evaluate field x in type string"


# --------------------------------------------------------------------------
# Trim markers and comments


def test_trim_markers_remove_adjacent_whitespace_and_newlines() -> None:
    assert render("a  \n {{- .name -}} \n\t b") == "aAdab"
    assert render("x {{3 -}}\n y") == "x 3y"
    assert render("x\n{{- 3}} y") == "x3 y"


def test_minus_without_a_space_is_a_number_not_a_trim_marker() -> None:
    assert render("x {{-3}} y") == "x -3 y"
    assert render("x {{- -3 -}} y") == "x-3y"


def test_comments_render_nothing() -> None:
    assert render("a{{/* a note */}}b") == "ab"
    assert render("a \n{{- /* a\nlonger note */ -}}\n b") == "ab"
    assert render("a {{/* c */ -}}  b") == "a b"


# --------------------------------------------------------------------------
# Functions


def test_and_or_return_an_operand() -> None:
    assert render('{{or "" "x"}}|{{or "y" "x"}}|{{or 0 false}}') == "x|y|false"
    assert render('{{and "a" ""}}|{{and "a" "b"}}|{{and 1 0 2}}') == "|b|0"


def test_and_or_short_circuit() -> None:
    assert render("{{or .name .missing}}") == "Ada"
    assert render("{{and .empty .missing}}") == ""


def test_not() -> None:
    assert render('{{not ""}} {{not 1}} {{not .name}}') == "true false false"


def test_not_takes_exactly_one_argument() -> None:
    err = error_of("{{not 1 2}}")
    assert (err.line, err.column) == (1, 3)
    assert err.reason == "wrong number of args for not: want 1 got 2"


def test_eq_compares_against_each_later_argument() -> None:
    assert render('{{eq "a" "b" "a"}} {{eq 1 2}} {{eq .num "42"}}') == "true false true"
    assert render('{{ne "a" "b"}} {{ne 1 1}}') == "true false"


def test_ordering_functions() -> None:
    out = render('{{lt 1 2}} {{le 2 2}} {{gt "b" "a"}} {{ge 1.5 2.5}} {{lt "abc" "abd"}}')
    assert out == "true true true false true"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{{eq 1 "a"}}', "error calling eq: incompatible types for comparison: int and string"),
        ("{{lt 1 1.5}}", "error calling lt: incompatible types for comparison: int and float64"),
        ("{{lt true false}}", "error calling lt: invalid type for comparison"),
        ("{{gt . 1}}", "error calling gt: invalid type for comparison"),
    ],
)
def test_comparing_incompatible_types_is_an_error(text: str, reason: str) -> None:
    err = error_of(text)
    assert (err.line, err.column) == (1, 3)
    assert err.reason == reason


def test_len_counts_bytes_and_map_entries() -> None:
    assert render('{{len .word}} {{len "héllo"}} {{len .}}') == "3 6 4"
    assert error_of("{{len 3}}").reason == "error calling len: len of type int"


def test_print_puts_spaces_only_between_non_strings() -> None:
    assert render('{{print 1 2 "a" "b" 3 true}}') == "1 2ab3 true"


def test_println_always_puts_spaces_and_a_newline() -> None:
    assert render('{{println "a" 1 "b"}}') == "a 1 b\n"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ('printf "%05d" 42', "00042"),
        ('printf "%.2f" 3.14159', "3.14"),
        ('printf "%-8s|" "ab"', "ab      |"),
        ('printf "%8s|" "ab"', "      ab|"),
        ('printf "%q" "a\\"b\\\\c\\n\\t\\x01"', '"a\\"b\\\\c\\n\\t\\x01"'),
        ('printf "%q" "é"', '"é"'),
        ('printf "%+q" "é"', '"\\u00e9"'),
        ('printf "%#q" "a\\tb"', "`a\tb`"),
        ('printf "%x %X" 255 255', "ff FF"),
        ('printf "%x|% x|%#x|%X" "hi" "hi" "hi" "hi"', "6869|68 69|0x6869|6869"),
        ('printf "%#x %#o %b %o" 255 8 5 8', "0xff 010 101 10"),
        ('printf "%x" -255', "-ff"),
        ('printf "%t %v" true false', "true false"),
        ('printf "100%%"', "100%"),
        ('printf "%d|%+d|% d|%6d|%-6d|" 7 7 7 7 7', "7|+7| 7|     7|7     |"),
        ('printf "%+08d|%08.3f" 42 -3.14159', "+0000042|-003.142"),
        (
            'printf "%6.2f|%e|%g|%G" 3.14159 1234.5678 0.00001234 1e21',
            "  3.14|1.234568e+03|1.234e-05|1E+21",
        ),
        ('printf "%v %v %v %v" 1e6 100000.0 0.000012 1.5', "1e+06 100000 1.2e-05 1.5"),
        ('printf "%s %v" .name .', "Ada map[empty: name:Ada num:42 word:abc]"),
        ('printf "%#v" .word', '"abc"'),
        ('printf "%T %T %T %T %T" 1 1.5 "s" true .', "int float64 string bool map[string]string"),
        ('printf "%[2]s %[1]s" "a" "b"', "b a"),
        ('printf "%*d|%-*d|" 5 1 4 2', "    1|2   |"),
        ('printf "%.3s|%.10s" "abcdef" "ab"', "abc|ab"),
        ('printf "%c%c %U %#U" 65 233 128512 128512', "Aé U+1F600 U+1F600 '😀'"),
        ('printf "%d" "hi"', "%!d(string=hi)"),
        ('printf "%s" 5', "%!s(int=5)"),
        ('printf "%d %d" 1', "1 %!d(MISSING)"),
        ('printf "%s" "a" "x" 2', "a%!(EXTRA string=x, int=2)"),
        ('printf "%v|%s" nil nil', "<nil>|%!s(<nil>)"),
        ('printf "%!|%z" 1 2', "%!!(int=1)|%!z(int=2)"),
        ('printf "%d"', "%!d(MISSING)"),
        ('printf "%"', "%!(NOVERB)"),
        ('printf "%v %#v %s" (index "a" 0) (index "a" 0) (index "a" 0)', "97 0x61 %!s(uint8=97)"),
    ],
)
def test_printf_follows_go_fmt(call: str, expected: str) -> None:
    assert render("{{" + call + "}}") == expected


def test_printf_without_arguments_is_an_error() -> None:
    err = error_of("x {{printf}}")
    assert (err.line, err.column) == (1, 5)
    assert err.reason == "wrong number of args for printf: want at least 1 got 0"


def test_printf_format_must_be_a_string() -> None:
    err = error_of("{{printf 3}}")
    assert (err.line, err.column) == (1, 10)
    assert err.reason == "expected string; found 3"


def test_unknown_function_is_an_error() -> None:
    err = error_of("ok\n {{ foo .name }}")
    assert (err.line, err.column) == (2, 5)
    assert err.reason == 'function "foo" not defined'


def test_functions_go_has_but_we_leave_out_say_so() -> None:
    assert error_of("{{html .name}}").reason == 'function "html" is not supported'


# --------------------------------------------------------------------------
# Sub-expressions and pipelines


def test_parenthesised_sub_expression_as_a_default() -> None:
    assert render('{{or (index . "k") "default"}}') == "default"
    assert render('{{or (index . "k") "default"}}', {"k": "given"}) == "given"


def test_piped_value_becomes_the_last_argument() -> None:
    assert render('{{.word | printf "%q"}}') == '"abc"'
    assert render('{{"a" | eq "a"}} {{"b" | eq "a"}}') == "true false"
    assert render('{{ .word | len | printf "%d bytes" }}') == "3 bytes"
    assert render('{{"x" | printf "%s-%s" "y"}}') == "y-x"


def test_a_field_cannot_take_a_piped_argument() -> None:
    err = error_of("{{.word | .name}}")
    assert (err.line, err.column) == (1, 11)
    assert err.reason == "name is not a method but has arguments"


# --------------------------------------------------------------------------
# Literals


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ('"a\\tb\\x41\\u00e9\\U0001F600\\101\\"\\\\"', 'a\tbAé😀A"\\'),
        ("`raw \\n {{ }}`", "raw \\n {{ }}"),
        ("`a\r\nb`", "a\nb"),
        ("42", "42"),
        ("-5", "-5"),
        ("+5", "5"),
        ("0x1F", "31"),
        ("0o17", "15"),
        ("017", "15"),
        ("0b101", "5"),
        ("1_000", "1000"),
        ("1.5", "1.5"),
        ("1e3", "1000"),
        (".5", "0.5"),
        ("1e6", "1e+06"),
        ("0x1p4", "16"),
        ("'a'", "97"),
        ("'\\n'", "10"),
        ("true", "true"),
        ("false", "false"),
    ],
)
def test_literals(literal: str, expected: str) -> None:
    assert render("{{" + literal + "}}") == expected


def test_nil_is_fine_as_an_argument_but_not_as_a_command() -> None:
    assert render("{{print nil}}") == "<nil>"
    err = error_of("{{nil}}")
    assert (err.line, err.column) == (1, 3)
    assert err.reason == "nil is not a command"


@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        ("99999999999999999999", 'integer overflow: "99999999999999999999"'),
        ("18446744073709551615", "18446744073709551615 overflows int"),
        ("1.a", 'bad number syntax: "1.a"'),
        ("0x", 'illegal number syntax: "0x"'),
        ('"\\q"', 'invalid string "\\"\\\\q\\"": invalid escape sequence \\q'),
        ("'ab'", "malformed character constant: 'ab'"),
        ("1i", "complex numbers are not supported"),
    ],
)
def test_bad_literals_are_errors(literal: str, reason: str) -> None:
    err = error_of("{{" + literal + "}}")
    assert (err.line, err.column) == (1, 3)
    assert err.reason == reason


# --------------------------------------------------------------------------
# Control structures


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"a": "1", "b": "1"}, "A"),
        ({"a": "", "b": "1"}, "B"),
        ({"a": "", "b": ""}, "C"),
    ],
)
def test_if_else_if_else(variables: dict[str, str], expected: str) -> None:
    text = "{{if .a}}A{{else if .b}}B{{else}}C{{end}}"
    assert render(text, variables) == expected


def test_if_without_else() -> None:
    assert render("[{{if .empty}}x{{end}}][{{if .name}}y{{end}}]") == "[][y]"


def test_with_sets_the_dot_and_has_an_else() -> None:
    assert render("{{with .name}}<{{.}}>{{end}}") == "<Ada>"
    assert render("{{with .empty}}<{{.}}>{{else}}none:{{.name}}{{end}}") == "none:Ada"
    assert render('{{with .empty}}1{{else with "z"}}{{.}}{{end}}') == "z"


@pytest.mark.parametrize(
    ("condition", "truth"),
    [
        ("false", False),
        ("0", False),
        ("0.0", False),
        ('""', False),
        (".empty", False),
        ('(index . "nope")', False),
        ("true", True),
        ("-1", True),
        ('"0"', True),
        (".name", True),
        (".", True),
    ],
)
def test_truthiness_follows_go(condition: str, truth: bool) -> None:
    assert render("{{if " + condition + "}}T{{else}}F{{end}}") == ("T" if truth else "F")


def test_an_empty_map_is_false() -> None:
    assert render("{{if .}}T{{else}}F{{end}}", {}) == "F"


def test_range_is_not_supported() -> None:
    err = error_of("x\n{{range .name}}{{end}}")
    assert (err.line, err.column) == (2, 3)
    assert err.reason == '"range" is not supported'


def test_variables_are_not_supported() -> None:
    err = error_of("{{$x := .name}}")
    assert (err.line, err.column) == (1, 3)
    assert err.reason == "variables are not supported"
    assert "variables are not supported" in error_of("{{$x}}").reason


# --------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ("a\n{{ .name", 2, 1, "unclosed action"),
        ('a\n  {{ "abc', 2, 6, "unterminated quoted string"),
        ('{{ "abc\n" }}', 1, 4, "unterminated quoted string"),
        ("{{`abc", 1, 3, "unterminated raw quoted string"),
        ("x{{/* abc", 1, 2, "unclosed comment"),
        ("{{/* abc */ }}", 1, 12, "comment ends before closing delimiter"),
        ("ok\n{{end}}", 2, 1, "unexpected {{end}}: there is no open {{if}} or {{with}}"),
        ("{{else}}", 1, 1, "unexpected {{else}}: there is no open {{if}} or {{with}}"),
        ("{{if .name}}\na", 2, 2, "unexpected EOF, missing {{end}} for {{if}} at line 1"),
        (
            "{{with .name}}\n{{if 1}}b{{end}}",
            2,
            17,
            "unexpected EOF, missing {{end}} for {{with}} at line 1",
        ),
        ("{{if 1}}{{else}}{{else}}{{end}}", 1, 17, "expected {{end}}; found a second {{else}}"),
        ("{{index}}", 1, 3, "wrong number of args for index: want at least 1 got 0"),
        ("{{.name )}}", 1, 9, "unexpected right paren"),
        ("{{ (1}}", 1, 4, "unclosed left paren"),
        ("{{| .name}}", 1, 3, 'unexpected "|" in command'),
        ('{{"a".b}}', 1, 6, 'unexpected . after term "\\"a\\""'),
        ("{{1 | 2}}", 1, 7, "non executable command in pipeline stage 2"),
        ('{{"a" "b"}}', 1, 3, 'can\'t give argument to non-function "a"'),
        ("{{}}", 1, 3, "missing value for command"),
        ("{{if}}x{{end}}", 1, 5, "missing value for if"),
        ("{{.name!}}", 1, 8, "bad character U+0021 '!'"),
        ("{{§}}", 1, 3, "unrecognized character in action: U+00A7 '§'"),
        ("{{:}}", 1, 3, "expected :="),
        ("{{index . 1}}", 1, 3, "error calling index: value has type int; should be string"),
        ('{{index "abc" 3}}', 1, 3, "error calling index: index out of range: 3"),
        ("{{and nil}}", 1, 7, "cannot use nil as an argument to and"),
        ('{{define "x"}}{{end}}', 1, 3, '"define" is not supported'),
    ],
)
def test_errors_point_at_the_culprit(text: str, line: int, column: int, reason: str) -> None:
    err = error_of(text)
    assert (err.line, err.column, err.reason) == (line, column, reason)


def test_template_error_formats_and_belongs_to_the_error_tree() -> None:
    err = error_of("x\ny {{.nope}}")
    assert isinstance(err, MeshnodeError)
    assert str(err) == (
        'template line 2, column 5: no value for variable "nope" (map has no entry for key "nope")'
    )
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.line, copy.column, copy.reason, str(copy)) == (2, 5, err.reason, str(err))


def test_parse_errors_are_reported_even_in_branches_not_taken() -> None:
    err = error_of("{{if .empty}}{{nosuch}}{{end}}")
    assert err.reason == 'function "nosuch" not defined'


# --------------------------------------------------------------------------
# Limits


def test_nesting_up_to_the_limit_renders() -> None:
    assert render("{{" + "(" * 100 + "1" + ")" * 100 + "}}") == "1"
    assert render("{{if 1}}" * 100 + "x" + "{{end}}" * 100) == "x"


@pytest.mark.parametrize(
    "text",
    [
        "{{" + "(" * 101 + "1" + ")" * 101 + "}}",
        "{{if 1}}" * 101 + "x" + "{{end}}" * 101,
        "{{" + "(" * 50_000 + "1" + ")" * 50_000 + "}}",
        "{{with 1}}" * 50_000,
    ],
)
def test_nesting_beyond_the_limit_is_a_clean_error(text: str) -> None:
    err = error_of(text)
    assert err.line == 1
    assert err.reason.startswith("template is nested too deeply (more than 100 levels")


def test_output_size_is_bounded() -> None:
    text = '{{printf "' + "%[1]s" * 100 + '" (printf "%999999d" 1)}}'
    err = error_of(text)
    assert (err.line, err.column) == (1, 3)
    assert err.reason.startswith("result of printf is larger than")


def _spec(actions: int, size: int) -> str:
    line = '        - --flag-%d\n          - {{or (index . "k%d") "none"}} some filler text\n'
    spec = "".join(line % (i, i) for i in range(actions))
    return spec + "#" * (size - len(spec))


def test_a_10kb_spec_with_50_actions_renders_every_action() -> None:
    # Speed is measured by benchmarks/template_render.py, not asserted here.
    spec = _spec(50, 10 * 1024)
    assert len(spec) == 10 * 1024
    assert spec.count("{{") == 50
    out = render_template(spec, {"k7": "seven"})
    assert "- seven some filler text" in out
    assert out.count("- none some filler text") == 49


def test_a_few_megabytes_render_whole() -> None:
    big = _spec(50, 10 * 1024) * 300  # 3 MB, 15,000 actions
    out = render_template(big, {})
    assert out.count("- none some filler text") == 15_000


# --------------------------------------------------------------------------
# Arbitrary input: a str or a TemplateError, never anything else

TOKENS = [
    "{{", "}}", "{{- ", " -}}", "(", ")", "|", '"', "`", "'", ".", "$", "-", " ", "\n", "\t",
    ".name", ".word", ".nope", "name", "if", "end", "else", "with", "range", "nil", "true",
    "index", "print", "printf", "println", "len", "eq", "lt", "and", "or", "not", "slice",
    "1", "0x1F", "-3", "1.5", "1e400", "'a'", '"%d"', '"%5.2q"', '"%[2]*d"', '"x"', "/*", "*/",
    ":=", ",", "\\", "%", "é", "§", "\x00",
]  # fmt: skip


def _assert_str_or_template_error(text: str) -> None:
    try:
        out = render(text)
    except TemplateError as err:
        assert 1 <= err.line <= text.count("\n") + 1
        assert err.column >= 1
        assert err.reason
    else:
        assert isinstance(out, str)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_gives_a_str_or_a_template_error(text: str) -> None:
    _assert_str_or_template_error(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_any_mix_of_template_tokens_gives_a_str_or_a_template_error(text: str) -> None:
    _assert_str_or_template_error(text)


@settings(max_examples=300, deadline=None)
@given(st.text().filter(lambda s: "{{" not in s))
def test_text_without_actions_renders_unchanged(text: str) -> None:
    assert render(text) == text


# --------------------------------------------------------------------------
# The real template

REFERENCE = """\
        Parameters:
          - --query
          - {{.query}}
          - --start-time
          - {{or (index . "start-time") ""}}
          - --end-time
          - {{or (index . "end-time") ""}}
        EnvironmentVariables:
          - OPENSEARCH_ENDPOINT={{.OpenSearchEndpoint}}
          - S3_BUCKET={{.AccessLogBucket}}
"""


def test_reference_template_renders() -> None:
    variables = {"query": "q1", "OpenSearchEndpoint": "http://os", "AccessLogBucket": "b"}
    assert render_template(REFERENCE, variables) == (
        "        Parameters:\n"
        "          - --query\n"
        "          - q1\n"
        "          - --start-time\n"
        "          - \n"
        "          - --end-time\n"
        "          - \n"
        "        EnvironmentVariables:\n"
        "          - OPENSEARCH_ENDPOINT=http://os\n"
        "          - S3_BUCKET=b\n"
    )


def test_reference_template_uses_optional_times_when_given() -> None:
    variables = {
        "query": "q1",
        "OpenSearchEndpoint": "http://os",
        "AccessLogBucket": "b",
        "start-time": "2024-01-01",
    }
    out = render_template(REFERENCE, variables)
    assert "          - 2024-01-01\n          - --end-time\n          - \n" in out


def test_reference_template_without_query_names_it_with_its_position() -> None:
    variables = {"OpenSearchEndpoint": "http://os", "AccessLogBucket": "b"}
    with pytest.raises(TemplateError) as info:
        render_template(REFERENCE, variables)
    err = info.value
    # Line 3 is "          - {{.query}}"; the column is that of the ".query" token.
    assert (err.line, err.column) == (3, 15)
    assert err.reason == 'no value for variable "query" (map has no entry for key "query")'
