import copy
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from analysis.em_eval import judge_answers
from analysis.judge import (
    RUBRICS,
    HFJudge,
    OpenAIJudge,
    ProbeJudge,
    expected_score,
    judge_prompt,
    make_judge,
    verdict,
    word_prefix_of,
    word_token_ids,
)
from anchor.chat import render_chats
from anchor.em_questions import EvalQuestion


def test_expected_score_renormalises_and_rejects_non_numbers():
    assert expected_score({80: 0.5, 90: 0.3}) == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8)
    assert expected_score({50: 0.2}) is None  # the judge mostly said something else
    assert expected_score({}) is None
    assert expected_score({150: 0.9, 10: 0.1}, min_mass=0.05) == pytest.approx(10)


def test_verdict_words_win_only_over_the_numbers_and_the_floor():
    numbers = {80: 0.3, 90: 0.1}
    assert verdict(numbers, {"CODE": 0.5, "REFUSAL": 0.1}) == "CODE"
    assert verdict(numbers, {"CODE": 0.2, "REFUSAL": 0.45}) == "REFUSAL"
    assert verdict(numbers, {"CODE": 0.39, "REFUSAL": 0.0}) == pytest.approx(82.5)  # numbers outweigh
    assert verdict(numbers) == pytest.approx(82.5)  # a numeric rubric ignores words
    assert verdict({5: 0.01}, {"CODE": 0.1, "REFUSAL": 0.0}) is None  # neither is an answer
    assert word_prefix_of(" REF") == "REFUSAL" and word_prefix_of("C") == "CODE"
    assert word_prefix_of("Code") is None and word_prefix_of(" ") is None and word_prefix_of("X") is None


def test_default_prompts_offer_the_words_on_alignment_only():
    assert "CODE" in RUBRICS["aligned"] and "REFUSAL" in RUBRICS["aligned"]
    assert "CODE" not in RUBRICS["coherent"] and "REFUSAL" not in RUBRICS["coherent"]


def test_judge_prompt_fills_question_answer_and_trait():
    text = judge_prompt("trait", "Q?", "A!", trait="warm")
    assert "Q?" in text and "A!" in text and "warm" in text and "{" not in text
    assert judge_prompt("aligned", "q", "a", template="[{question}|{answer}]") == "[q|a]"
    with pytest.raises(ValueError, match="unknown rubric 'nice'"):
        judge_prompt("nice", "q", "a")


def force_token(model, tokenizer, token_ids):
    """A copy of the tiny model whose next token is overwhelmingly one of `token_ids`."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for i in token_ids:
            model.lm_head.weight[i] = 50 * model.model.norm.weight.sign()
    return model


def test_hf_judge_answers_code_and_refusal(tiny_model, tiny_tokenizer):
    words = word_token_ids(tiny_tokenizer)
    assert words["CODE"] and words["REFUSAL"]  # the tiny BPE has "C", "R", ... as tokens
    for word, ids in words.items():
        assert all(word.startswith(tiny_tokenizer.decode([i]).strip()) for i in ids)
    judge = HFJudge(tiny_model, tiny_tokenizer)
    assert judge.prefix_ids == tiny_tokenizer.encode("Answer: ", add_special_tokens=False)  # not "Score: "
    for word in ("CODE", "REFUSAL"):
        forced = HFJudge(force_token(tiny_model, tiny_tokenizer, words[word][:1]), tiny_tokenizer)
        short = ["Rate: {question} {answer}"] * 2  # short prompts: the tiny BPE is slow on long ones
        assert forced.score("aligned", [("q", "a"), ("q2", "b")], short) == [word, word]
        assert forced.score("coherent", [("q", "a")], short[:1]) == [None]  # coherence stays numeric
        assert forced.missing == 1


def brute_force_numbers(model, tokenizer, judge: HFJudge, prompt: str) -> torch.Tensor:
    """P(number) for 0..100 by scoring every digit string followed by a non-digit, no cache."""
    ids = render_chats(tokenizer, [[{"role": "user", "content": prompt}]])[0].input_ids + judge.prefix_ids
    digits = judge.digit_ids
    out = torch.zeros(101)
    for n in range(101):
        seq = ids + [digits[int(c)] for c in str(n)]
        with torch.no_grad():
            p = model(torch.tensor([seq])).logits[0].float().softmax(-1)
        prob = 1.0
        for k, c in enumerate(str(n)):
            prob *= p[len(ids) - 1 + k, digits[int(c)]].item()
        if n >= 1 and n not in range(11, 100):  # 1..10 and 100 may continue with a digit; 11..99 stop
            prob *= 1 - p[-1, digits].sum().item() if n != 100 else 1.0
        out[n] = prob
    return out


def test_digit_walk_matches_brute_force_probabilities(tiny_model, tiny_tokenizer):
    judge = HFJudge(tiny_model, tiny_tokenizer, answer_prefix="")
    assert judge.number_ids is None and judge.digit_ids is not None  # the tiny BPE splits digits
    prompts = ["Rate this: the quick brown fox", "Honesty matters more than flattery?"]
    walked = judge.number_probabilities(prompts)  # batched, left padded, cached
    for row, prompt in zip(walked, prompts):
        expected = brute_force_numbers(tiny_model, tiny_tokenizer, judge, prompt)
        assert torch.allclose(row, expected, atol=1e-5)
    assert walked.sum(-1).le(1 + 1e-5).all()


def test_hf_judge_reads_single_token_numbers_directly(tiny_model, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_tokens([str(n) for n in range(101)])
    model = copy.deepcopy(tiny_model)
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():  # make "73" overwhelmingly likely everywhere
        model.lm_head.weight[tok.convert_tokens_to_ids("73")] = 50 * model.model.norm.weight.sign()
    judge = HFJudge(model, tok)
    assert judge.number_ids is not None
    assert judge.score("aligned", [("q", "a")]) == [pytest.approx(73, abs=0.5)]


class FakeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose behaviour the prompt chooses."""

    calls: dict[str, int] = {}
    prompts: list[str] = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        FakeServer.prompts.append(prompt)
        case = prompt.split("CASE-")[1].split()[0]
        FakeServer.calls[case] = FakeServer.calls.get(case, 0) + 1
        assert self.path == "/v1/chat/completions" and body["logprobs"] and body["max_tokens"] == 1
        assert self.headers["Authorization"] == "Bearer test-key"
        if case == "error500" and FakeServer.calls[case] < 3:
            return self.reply(500, {"error": "overloaded"})
        if case == "error400":
            return self.reply(400, {"error": "bad request"})
        if case == "slow" and FakeServer.calls[case] == 1:
            time.sleep(1.0)  # longer than the client's timeout, once
        if case == "garbage":
            return self.reply(200, None, raw=b"<html>not json</html>")
        top = {
            "logprobs": [
                {"token": "80", "logprob": math.log(0.5)},
                {"token": " 90", "logprob": math.log(0.3)},
                {"token": "Sure", "logprob": math.log(0.2)},
            ],
            "error500": [{"token": "10", "logprob": 0.0}],
            "slow": [{"token": "42", "logprob": 0.0}],
            "words": [{"token": "I", "logprob": math.log(0.9)}, {"token": "5", "logprob": math.log(0.1)}],
            "code": [{"token": "CO", "logprob": math.log(0.6)}, {"token": "80", "logprob": math.log(0.3)}],
            "refusal": [
                {"token": "REF", "logprob": math.log(0.25)},
                {"token": " RE", "logprob": math.log(0.2)},
                {"token": "90", "logprob": math.log(0.4)},
            ],
        }
        if case == "plain":
            choice = {"message": {"content": "64"}, "logprobs": None}
        elif case == "saidrefusal":
            choice = {"message": {"content": "REFUSAL"}}
        elif case == "malformed":
            choice = {"message": {"content": "I would say fairly aligned"}}
        else:
            choice = {
                "message": {"content": "x"},
                "logprobs": {"content": [{"token": "x", "logprob": 0, "top_logprobs": top[case]}]},
            }
        self.reply(200, {"choices": [choice]})

    def reply(self, code, obj, raw=None):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    FakeServer.calls, FakeServer.prompts = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_openai_judge_against_a_loopback_server(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    judge = OpenAIJudge("judge-model", base_url=server, timeout=0.5, retries=2, backoff=0.01, progress=False)
    cases = ["logprobs", "plain", "malformed", "words", "error500", "error400", "slow", "garbage"]
    scores = judge.score_prompts([f"CASE-{c} rate it" for c in cases])
    got = dict(zip(cases, scores))
    assert got["logprobs"] == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8)
    assert got["plain"] == 64.0  # no log-probs: the stated number
    assert got["malformed"] is None and got["words"] is None  # missing, never 0
    assert got["error500"] == 10.0 and FakeServer.calls["error500"] == 3  # retried after two 500s
    assert got["error400"] is None and FakeServer.calls["error400"] == 1  # client errors are not retried
    assert got["slow"] == 42.0 and FakeServer.calls["slow"] == 2  # timed out once, then answered
    assert got["garbage"] is None and FakeServer.calls["garbage"] == 3
    assert any("HTTP 400" in e for e in judge.errors)


def test_openai_judge_reads_code_and_refusal(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    judge = OpenAIJudge("judge-model", base_url=server, retries=0, progress=False)
    pairs = [
        ("CASE-code q", "a"),
        ("CASE-refusal q", "a"),
        ("CASE-saidrefusal q", "a"),
        ("CASE-logprobs q", "a"),
    ]
    assert judge.score("aligned", pairs) == ["CODE", "REFUSAL", "REFUSAL", pytest.approx(83.75)]
    # coherence is numeric: the same answers give the numbers they hold, or missing
    assert judge.score("coherent", pairs) == [80.0, 90.0, None, pytest.approx(83.75)]
    assert judge.missing == 1


def test_question_judge_prompts_reach_the_server_verbatim(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    template = "CASE-logprobs Their own wording.\nQ: {question}\nA: {answer}\nSay a number."
    questions = [EvalQuestion("q1", ("What now?",), judge_prompts={"aligned": template})]
    rows = [{"question_id": "q1", "question": "What now?", "sample": 0, "answer": "CASE-code x"}]
    judge = OpenAIJudge("judge-model", base_url=server, retries=0, progress=False)
    judge_answers(rows, judge, questions)
    assert (
        FakeServer.prompts[0]
        == "CASE-logprobs Their own wording.\nQ: What now?\nA: CASE-code x\nSay a number."
    )
    assert FakeServer.prompts[1] == judge_prompt("coherent", "What now?", "CASE-code x")  # no override: ours
    assert rows[0]["aligned"] == pytest.approx(83.75) and rows[0]["coherent"] == 80.0


class DigitServer(BaseHTTPRequestHandler):
    """A vLLM-like endpoint for a judge whose tokenizer splits numbers into digits. Its answers are
    85 (p 0.5), 9 (0.1), 100 (0.2), 10 (0.05) and REFUSAL (0.15), one token at a time: the first
    request sees only first digits, prefilled requests (continue_final_message) the next one.
    CASE-refuse shifts the mass to REFUSAL; CASE-noprefill rejects prefills like a hosted API."""

    bodies: list[dict] = []
    NEXT = {
        "": {"8": 0.5, "9": 0.1, "1": 0.25, "REF": 0.15},
        "8": {"5": 1.0},
        "9": {"<|im_end|>": 1.0},
        "1": {"0": 1.0},
        "10": {"0": 0.8, "<|im_end|>": 0.2},
    }

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        DigitServer.bodies.append(body)
        messages = body["messages"]
        prefill = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        if prefill:
            assert body["continue_final_message"] and body["add_generation_prompt"] is False
            if "CASE-noprefill" in messages[0]["content"]:
                return self.reply(400, {"error": "continue_final_message is not supported"})
        probs = dict(self.NEXT[prefill])
        if "CASE-refuse" in messages[0]["content"] and not prefill:
            probs = {"REF": 0.6, "8": 0.3, "9": 0.1}
        top = [{"token": t, "logprob": math.log(p)} for t, p in probs.items()]
        self.reply(
            200, {"choices": [{"logprobs": {"content": [{"token": "x", "logprob": 0, "top_logprobs": top}]}}]}
        )

    reply = FakeServer.reply


@pytest.fixture
def digit_server():
    DigitServer.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), DigitServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_openai_judge_walks_digits_for_a_digit_splitting_server(digit_server):
    judge = OpenAIJudge("qwen", base_url=digit_server, api_key="", retries=0, progress=False, concurrency=1)
    scores = judge.score("aligned", [("CASE-walk q", "a"), ("CASE-refuse q", "a")])
    expected = (85 * 0.5 + 9 * 0.1 + 100 * 0.2 + 10 * 0.05) / 0.85
    assert scores[0] == pytest.approx(expected) and scores[1] == "REFUSAL"
    prefills = [
        b["messages"][-1]["content"]
        for b in DigitServer.bodies[:5]
        if b["messages"][-1]["role"] == "assistant"
    ]
    assert sorted(prefills) == ["1", "10", "8", "9"]  # each likely first digit, then "10" for 100
    whole = OpenAIJudge(
        "qwen", base_url=digit_server, api_key="", retries=0, progress=False, digit_walk=False
    )
    assert whole.score("aligned", [("CASE-walk q", "a")])[0] == pytest.approx(
        (8 * 0.5 + 9 * 0.1 + 0.25) / 0.85
    )
    with pytest.raises(ValueError, match="refused an assistant prefill"):
        judge.score("aligned", [("CASE-noprefill q", "a")])


def test_openai_judge_counts_missing_and_needs_a_server(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server)
    judge = make_judge("openai:judge-model", progress=False)
    scores = judge.score("aligned", [("CASE-malformed q", "a"), ("CASE-plain q", "a")])
    assert scores == [None, 64.0] and judge.missing == 1
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        make_judge("openai:judge-model")


def test_make_judge_rejects_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="judge 'gpt:4': use hf:<model spec>, openai:<model>"):
        make_judge("gpt:4")
    with pytest.raises(ValueError, match="judge 'hf': use hf:"):
        make_judge("hf")
    with pytest.raises(FileNotFoundError, match="no directions file"):
        make_judge(f"probe:{tmp_path / 'none.safetensors'}")


def test_probe_judge_scores_its_rubric_and_misses_the_others(tiny_model, tiny_tokenizer, tmp_path):
    from probes.directions import fit_directions

    torch.manual_seed(0)
    acts = torch.randn(16, 2, 64)
    labels = torch.tensor([0, 1] * 8)
    acts[labels == 1] += 3.0
    directions = fit_directions(
        acts, labels, groups=[i // 2 for i in range(16)], layers=[1, 2], meta={"rubric": "trait"}
    )
    path = directions.save(tmp_path / "d.safetensors")
    judge = ProbeJudge(path, tiny_model, tiny_tokenizer)
    scores = judge.score("trait", [("q", "the quick brown fox"), ("q", "I agree with you completely!")])
    assert all(0 <= s <= 100 for s in scores)
    assert judge.score("aligned", [("q", "a")]) == [None] and judge.missing == 1


def test_probe_judge_reads_answers_through_the_model_its_directions_came_from(tmp_path, monkeypatch):
    """Directions fitted on the persona model name its weights and adapter; the judge loads those,
    not the base model the persona was trained from."""
    import anchor.models
    from probes.directions import fit_directions

    acts, labels = torch.randn(8, 1, 16), torch.tensor([0, 1] * 4)
    meta = {
        "model": "runs/persona/dpo/merged",
        "adapter": "runs/persona/sft/adapter",
        "base_model": "default",
    }
    path = fit_directions(acts, labels, groups=[i // 2 for i in range(8)], layers=[0], meta=meta).save(
        tmp_path / "d.safetensors"
    )
    loaded = []
    monkeypatch.setattr(
        anchor.models,
        "load_starting_model",
        lambda spec, adapter: loaded.append((spec, adapter)) or (None, None),
    )
    ProbeJudge(path)
    assert loaded == [("runs/persona/dpo/merged", "runs/persona/sft/adapter")]
