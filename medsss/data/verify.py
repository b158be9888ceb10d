"""Rule-based answer extraction and correctness (see docs/method.md#answer-grading).

``extract_answer`` finds the answer a solution states; ``option_of`` reads which option of a choice
question that answer names; ``is_correct`` grades it against the gold answer as a careful human
grader would. All three accept any string (or None) and never raise: search and evaluation call
them on raw model output, which can be empty, truncated or nonsensical.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# --- extraction -------------------------------------------------------------------------------

# In priority order: the first pattern that occurs anywhere in the searched text decides, and its
# last occurrence wins (a solution that revises itself states its final answer last). Word
# boundaries keep "The answer is" from matching inside "bathe answer is" or "the answer isn't";
# "the correct answer is" does not contain "the answer is", so the two never shadow each other.
_ANSWER_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\bthe answer is\b", re.IGNORECASE),
    re.compile(r"\bthe correct (?:answer|option) is\b", re.IGNORECASE),
    # "Final answer" then ":", "is" or whitespace; emphasis may close first ("**Final answer**: C").
    re.compile(r"\bfinal answer(?:[*_]*[ \t]*:|[*_]*\s+is\b|[*_]*(?=\s))", re.IGNORECASE),
    # A line that starts with "Answer:", emphasis and heading marks allowed around the word.
    re.compile(r"^[ \t>#*_]*answer[ \t*_]*:", re.IGNORECASE | re.MULTILINE),
)

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"

_EDGE_CHARS = " \t\r\n\u00a0\u200b\ufeff:*\"'`“”‘’$"
# LaTeX wrappers whose argument is the answer: \boxed{C}, \text{C}, \textbf{C}, \mathrm{C}, ...
_LATEX_WRAPPER = re.compile(r"\\(?:boxed|fbox|text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LATEX_DELIMITERS = ("\\(", "\\)", "\\[", "\\]")
# A run of edge characters and LaTeX delimiters at the head of an answer; at its tail (matched on
# the reversed text, where a delimiter reads ")\"), periods too.
_LEADING_EDGE = re.compile(
    "(?:[" + re.escape(_EDGE_CHARS) + "]|" + "|".join(map(re.escape, _LATEX_DELIMITERS)) + ")*"
)
_TRAILING_EDGE_REVERSED = re.compile(
    "(?:[" + re.escape(_EDGE_CHARS + ".") + "]|"
    + "|".join(re.escape(delimiter[::-1]) for delimiter in _LATEX_DELIMITERS)
    + ")*"
)
# Passes of clean_answer: one per level of LaTeX wrappers ("\boxed{\text{C}}" takes two).
_CLEAN_PASSES = 32
# How many lines after a phrase that ends its line are looked at for the answer.
_NEXT_LINES = 3


def extract_answer(text: str | None) -> str | None:
    """The answer a solution states, or None when it states none.

    Phrases, in priority order: "The answer is"; "The correct answer is" / "The correct option
    is"; "Final answer" followed by ":", "is" or a space; a line-initial "Answer:" (emphasis
    allowed). The last match of the first phrase that matches wins. Takes the rest of that line
    (or, when the phrase ends its line, the next line that is not empty, at most three lines
    down), then strips spaces, colons, asterisks, quotes, LaTeX wrappers and trailing periods.

    Thinking is not searched: the search covers the text after the last ``</think>`` (the opening
    tag may sit in the prompt), and a ``<think>`` that is never closed runs to the end of the text,
    so an output cut off while thinking states no answer even when it tried one out.
    """
    if not isinstance(text, str) or not text:
        return None
    searched = _after_thinking(text)
    for pattern in _ANSWER_PATTERNS:
        matches = list(pattern.finditer(searched))
        if not matches:
            continue
        return _answer_after(searched, matches[-1].end())
    return None


def _after_thinking(text: str) -> str:
    close = text.rfind(_THINK_CLOSE)
    if close >= 0:
        text = text[close + len(_THINK_CLOSE):]
    unclosed = text.find(_THINK_OPEN)
    return text[:unclosed] if unclosed >= 0 else text


def _answer_after(text: str, start: int) -> str | None:
    lines = text[start:].splitlines()
    for line in lines[: 1 + _NEXT_LINES]:
        answer = clean_answer(line)
        if answer:
            return answer
    return None


def clean_answer(fragment: str) -> str:
    """A fragment without surrounding spaces, colons, emphasis, quotes, LaTeX and final periods."""
    answer = fragment
    # Strip until stable: "$\boxed{C}$." needs the period and dollars, then the box removed. Each
    # pass unwraps one level of LaTeX wrappers: an answer wrapped deeper than the passes allow stays
    # partly wrapped (a pass is linear; a pass per level of a megabyte of "\boxed{" was not).
    for _ in range(_CLEAN_PASSES):
        cleaned = _strip_ends(_LATEX_WRAPPER.sub(r"\1", answer))
        if cleaned == answer:
            break
        answer = cleaned
    return answer


def _strip_ends(answer: str) -> str:
    """The answer without leading edge characters and LaTeX delimiters and without trailing ones
    (and periods), each run removed at once: one slice, not one per delimiter."""
    start = _run_length(_LEADING_EDGE, answer)
    end = len(answer) - _run_length(_TRAILING_EDGE_REVERSED, answer[start:][::-1])
    return answer[start:end]


def _run_length(pattern: re.Pattern[str], text: str, start: int = 0) -> int:
    """How many characters from ``start`` a pattern that may match empty matches."""
    match = pattern.match(text, start)
    return match.end() - start if match else 0


# --- which option an answer names --------------------------------------------------------------

# Words a model puts before the letter it means: "option C", "likely C", "indeed B", "it is A".
# Removed only from the head of the answer, repeatedly.
_LEADING_WORDS = re.compile(
    r"(?:option|options|choice|answer|letter|label|class|most likely|likely|probably|possibly|"
    r"perhaps|indeed|definitely|clearly|certainly|therefore|thus|hence|so|then|it is|it's|"
    r"this is|that is|would be|will be|should be|must be|is|be|the|correct|best|final|either|but|"
    r"rather|actually|still|my|our)\b",
    re.IGNORECASE,
)
_HEAD_PUNCTUATION = " \t\r\n\u00a0:;,.-–—>#\"'`“”‘’!?"
_HEAD_RUN = re.compile("[" + re.escape(_HEAD_PUNCTUATION) + "]*")
# A letter the answer rules out: "not B", "isn't option C", "rather than (A)". A lower-case letter
# counts only where it cannot be the article: "is not a fact" rules nothing out.
_NEGATED_LETTER = re.compile(
    r"(?i:\b(?:not|isn't|is not|never|rather than|instead of|except|excluding)\s+"
    r"(?:option\s+|choice\s+|answer\s+)?)"
    r"[(\[]?(?:[A-Z]|[a-z](?=\s*(?:[).,;:\]]|$)))(?![A-Za-z0-9])[)\]]?"
)
# A label at the head of an answer: "C", "(C)", "[C]", "C)".
_LABEL = re.compile(r"([(\[]\s*)?([A-Za-z])(\s*[)\]])?")
# A connective right after the leading label: "B or A", "C and B", "B/C", "B, C", "B (or possibly A)".
_CONNECTIVE = re.compile(
    r"\s*[).:\]]?\s*\(?\s*(?:,|/|&|(?i:or|and|vs\.?|versus)\b)\s*"
    r"(?i:(?:possibly|perhaps|maybe|also|option|choice)\s+)*"
)
# Later in the answer: "C. Acute pancreatitis or B. Chronic pancreatitis".
_LATER_LETTER = re.compile(r"\b(?i:or|and)\s+(?i:option\s+|choice\s+)?[(\[]?([A-Z])(?:[)\].:]|\s*$)")
# After a standalone "A" (or "I"), words that show it is the option and not the English word.
_LETTER_VERBS = re.compile(
    r"\s+(?:is|was|would|will|should|seems|appears|because|since|and|or|vs|versus|option|choice)\b",
    re.IGNORECASE,
)
_ENGLISH_ONE_LETTER_WORDS = frozenset("AaIi")
_NEGATION_WORDS = frozenset({"not", "never", "isn", "nor"})
# Occurrences of one option's text looked at: an answer repeating it more often is no real answer,
# and the nesting check is quadratic in them.
_MAX_OCCURRENCES = 50


def option_of(pred: str | None, options: Mapping[str, str] | None = None) -> str | None:
    """The option letter an answer names, or None when it names none or more than one.

    With ``options`` (letter -> text), an answer that is exactly one option's text names that
    option ("E. coli" is the option "E. coli", not E). Otherwise a standalone leading letter
    decides, after brackets, emphasis, LaTeX wrappers and leading words such as "option", "likely" or
    "indeed" are removed and letters ruled out with "not" are dropped ("not B; it is A" is A); a
    second, different letter after "or"/"and"/"," makes it ambiguous. Without a letter, and given
    ``options``, the one option whose text the answer starts with or contains (whole words, not
    negated, the longest where one option's text holds another's), or whose label before a comma
    it names ("false" for "false, text1 is not a fact."); a leading letter that is not among the
    options is read this way too.
    """
    text = _plain(pred)
    if not text:
        return None
    option_texts = _normalised_options(options)
    text = _NEGATED_LETTER.sub(" ", text)
    head = _strip_leading_words(text)
    if option_texts is not None:
        equal = _equal_option(head, option_texts)
        if equal is not None:
            return equal
    letter = _leading_letter(head, option_texts)
    if letter is not None and (option_texts is None or letter in option_texts):
        return None if _names_a_second_letter(head, letter, option_texts) else letter
    if option_texts is None:
        return None
    # No letter, or one that is no option ("E. coli infection" among four options): the text.
    return _option_by_text(text, head, option_texts)


def _plain(pred: str | None) -> str:
    """The answer without LaTeX wrappers, emphasis and surrounding quotes."""
    if not isinstance(pred, str):
        return ""
    text = clean_answer(pred)
    text = text.replace("**", "").replace("__", "").replace("$", "")
    return text.strip(_EDGE_CHARS)


def _normalised_options(options: Mapping[str, str] | None) -> dict[str, str] | None:
    if not options or not isinstance(options, Mapping):
        return None
    return {str(key).strip().upper(): str(value) for key, value in options.items()}


def _strip_leading_words(text: str) -> str:
    # Advances an index and slices once: a slice per word was quadratic in "so so so ... B".
    position = -1
    start = 0
    while start != position:
        position = start
        start += _run_length(_HEAD_RUN, text, start)
        match = _LEADING_WORDS.match(text, start)
        if match:
            start = match.end()
    return text[start:]


def _equal_option(head: str, options: dict[str, str]) -> str | None:
    """The one option whose whole text (longer than a letter) the answer is."""
    answer = _normalise(head)
    equal = [
        letter for letter, option in options.items()
        if len(option.strip()) > 1 and _normalise(option) == answer
    ]
    return equal[0] if len(equal) == 1 else None


def _leading_letter(head: str, options: dict[str, str] | None) -> str | None:
    """The letter a head starts with when it stands alone as an option label."""
    match = _LABEL.match(head)
    if match is None:
        return None
    letter, closed = match.group(2), match.group(3)
    rest = head[match.end():]
    if closed or not rest:
        return letter.upper()
    if rest[0].isalnum():  # a word ("Cardiac") or a token ("B12"), not a label
        return None
    if not rest[0].isspace():  # "C.", "C:", "C,", "C-"
        return letter.upper()
    # Whitespace follows: a label, unless the letter is the article "a" or the pronoun "I"
    # ("a case of ...") and nothing shows it is the option.
    if letter not in _ENGLISH_ONE_LETTER_WORDS:
        return letter.upper()
    own = options.get(letter.upper()) if options is not None else None
    if own and _normalise(rest).startswith(_normalise(own)):
        return letter.upper()
    if _LETTER_VERBS.match(rest):
        return letter.upper()
    return None


def _names_a_second_letter(head: str, letter: str, options: dict[str, str] | None) -> bool:
    """Whether an answer that starts with ``letter`` also names a different option letter."""
    label = _LABEL.match(head)
    after = head[label.end():] if label else head
    connective = _CONNECTIVE.match(after)
    if connective:
        second = _leading_letter(after[connective.end():], options)
        if second is not None and second != letter:
            return True
    own = (options.get(letter) or "").rstrip(".") if options is not None else ""
    own_at = after.lower().find(own.lower()) if own else -1
    if own_at >= 0:
        # "B. Hepatitis B or C": the option's own text may hold connectives and letters.
        after = after[own_at + len(own):]
    return any(later != letter for later in _LATER_LETTER.findall(after))


# --- options named by their text ---------------------------------------------------------------


def _normalise(text: str) -> str:
    """Lower case, punctuation to spaces (decimal points kept), single spaces."""
    text = re.sub(r"(?<=\d)[.,](?=\d)", "\x00", text.lower())
    text = re.sub(r"[^0-9a-z\x00]+", " ", text)
    return text.replace("\x00", ".").strip()


def _option_by_text(text: str, head: str, options: dict[str, str]) -> str | None:
    """The one option an answer names by its text: leading, contained, or by its label."""
    texts = {letter: _normalise(option) for letter, option in options.items()}
    texts = {letter: option for letter, option in texts.items() if option}
    answer = _normalise(text)
    if not answer or not texts:
        return None

    for candidate in (_normalise(head), answer):
        leading = _longest_leading(candidate, texts)
        if leading is not None:
            return None if _hedged(candidate, leading, texts) else leading

    named = _contained(answer, texts)
    if named:
        return named[0] if len(named) == 1 else None

    labels = _labels(options)
    if labels is not None:
        for candidate in (_normalise(head), answer):
            leading = _longest_leading(candidate, labels)
            if leading is not None:
                return None if _hedged(candidate, leading, labels) else leading
        named = _contained(answer, labels)
        if len(named) == 1:
            return named[0]
    return None


def _labels(options: dict[str, str]) -> dict[str, str] | None:
    """Each option's label before its first comma ("true, text1 is a fact." -> "true"), when
    every option has one and they are distinct; else None."""
    if not all("," in option for option in options.values()):
        return None
    labels = {letter: _normalise(option.split(",", 1)[0]) for letter, option in options.items()}
    if "" in labels.values() or len(set(labels.values())) != len(labels):
        return None
    return labels


def _longest_leading(answer: str, texts: dict[str, str]) -> str | None:
    """The option whose text the answer starts with (at a word boundary), the longest one."""
    starting = [
        (len(option), letter)
        for letter, option in texts.items()
        if answer == option or answer.startswith(option + " ")
    ]
    return max(starting)[1] if starting else None


def _hedged(answer: str, letter: str, texts: dict[str, str]) -> bool:
    """Whether an answer that starts with one option's text goes on to offer another."""
    rest = answer[len(texts[letter]):].strip()
    match = re.match(r"(?:or|and|vs|versus)\s+(?:(?:possibly|perhaps|also)\s+)?", rest)
    if not match:
        return False
    rest = rest[match.end():]
    return any(
        other != letter and (rest == option or rest.startswith(option + " "))
        for other, option in texts.items()
    )


def _contained(answer: str, texts: dict[str, str]) -> list[str]:
    """The letters whose text occurs in the answer as whole words, not right after a negation,
    and not only inside a longer option's occurrence."""
    padded = f" {answer} "  # single spaces between words: see _normalise
    spans: dict[str, list[tuple[int, int]]] = {}
    for letter, option in texts.items():
        needle = f" {option} "
        start = padded.find(needle)
        found = 0
        while start >= 0 and found < _MAX_OCCURRENCES:
            found += 1
            word_before = padded[padded.rfind(" ", 0, start) + 1 : start]
            if word_before not in _NEGATION_WORDS:
                spans.setdefault(letter, []).append((start + 1, start + len(needle) - 1))
            start = padded.find(needle, start + 1)
    return [
        letter for letter, own in spans.items()
        if not all(_inside_a_longer_span(span, letter, spans) for span in own)
    ]


def _inside_a_longer_span(
    span: tuple[int, int], letter: str, spans: dict[str, list[tuple[int, int]]]
) -> bool:
    start, end = span
    return any(
        other_start <= start and end <= other_end and other_end - other_start > end - start
        for other, other_spans in spans.items() if other != letter
        for other_start, other_end in other_spans
    )


# --- correctness -------------------------------------------------------------------------------


def is_correct(pred: str | None, gold: str | None, options: Mapping[str, str] | None = None) -> bool:
    """Whether a predicted answer matches the gold one, as a careful grader would judge.

    - A one-letter gold: the option the prediction names (:func:`option_of`) is the gold letter.
    - A one-digit gold (a class label such as HealthFact's "0"/"1"/"2"): the prediction's first
      alphanumeric token, after the same leading words are removed, is that digit.
    - A longer gold (free text): the gold occurs in the prediction, ignoring case, runs of spaces
      and the kind of dash, and not inside a longer word or number ("125 mg" and "2.5 mg" do not
      contain "25 mg" or "5 mg").
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    gold = gold.strip()
    if not pred.strip() or not gold:
        return False
    if len(gold) == 1 and gold.isalpha():
        return option_of(pred, options) == gold.upper()
    if len(gold) == 1 and gold.isdigit():
        token = re.match(r"[A-Za-z0-9]+", _strip_leading_words(_plain(pred)))
        return token is not None and token.group(0) == gold
    return _contains_free_text(pred, gold)


# Dashes a model may write for the hyphen of a range ("20–25 mg/d").
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212", "-"))


def _contains_free_text(pred: str, gold: str) -> bool:
    haystack = " ".join(pred.lower().translate(_DASHES).split())
    needle = " ".join(gold.lower().translate(_DASHES).split())
    start = haystack.find(needle)
    while start >= 0:
        end = start + len(needle)
        if not _continues_left(haystack, start, needle) and not _continues_right(haystack, end, needle):
            return True
        start = haystack.find(needle, start + 1)
    return False


def _continues_left(text: str, start: int, needle: str) -> bool:
    """Whether the match at ``start`` is the tail of a longer word or number."""
    if start == 0 or not needle[0].isalnum():
        return False
    before = text[start - 1]
    if before.isalnum():
        return True
    # "2.5 mg" holds "5 mg" after a decimal point: the number goes on to the left.
    return needle[0].isdigit() and before in ".," and start >= 2 and text[start - 2].isdigit()


def _continues_right(text: str, end: int, needle: str) -> bool:
    """Whether the match ending at ``end`` is the head of a longer word or number."""
    if end >= len(text) or not needle[-1].isalnum():
        return False
    after = text[end]
    if after.isalnum():
        return True
    return needle[-1].isdigit() and after in ".," and end + 1 < len(text) and text[end + 1].isdigit()
