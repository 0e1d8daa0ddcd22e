"""Qwen3's and Llama 3's tokenizer.json as the library's vocabulary, and their chat formats."""

import json

import pytest
import tensorflow as tf

from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary
from swirl_jax.environment import protocol
from swirl_jax.testing.tiny_hf_tokenizer import write_tiny_hf_tokenizer


@pytest.mark.parametrize("family", ["qwen3", "llama3"])
def test_a_tokenizer_json_vocabulary_round_trips_and_knows_its_turns(tmp_path, family):
  vocab = HFTokenizerVocabulary(write_tiny_hf_tokenizer(str(tmp_path), family))
  fmt = vocab.chat_format
  assert fmt is {"qwen3": protocol.CHATML, "llama3": protocol.LLAMA3}[family]
  text = fmt.start_user + "What is 3 + 4? It is 7, é 中." + fmt.closed() + fmt.start_model + "<math_exp>3+4</math_exp>"
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text  # byte-level BPE: every string, unicode too
  end_of_turn = vocab.encode(fmt.end_turn)
  assert len(end_of_turn) == 1  # a special token written in text is its one id
  assert vocab.tokenizer.id_to_token(end_of_turn[0]) == fmt.end_turn
  stops = protocol.turn_end_ids(vocab)
  assert end_of_turn[0] in stops and vocab.eos_id in stops and set(vocab.stop_ids) <= set(stops)
  if family == "qwen3":
    assert vocab.bos_id is None and vocab.eos_id == end_of_turn[0]
  else:
    assert vocab.tokenizer.id_to_token(vocab.bos_id) == "<|begin_of_text|>"
    assert vocab.tokenizer.id_to_token(vocab.eos_id) == "<|eot_id|>"
  assert len(vocab.stop_ids) == 2 and vocab.piece_count <= 400
  # seqio's TensorFlow side agrees with the Python side.
  assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == list(ids)
  assert vocab.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == text


@pytest.mark.parametrize("family", ["qwen3", "llama3"])
def test_the_prompt_and_tool_turns_are_written_in_the_family_s_chat_format(tmp_path, family):
  vocab = HFTokenizerVocabulary(write_tiny_hf_tokenizer(str(tmp_path), family))
  fmt = protocol.chat_format(vocab)
  example = protocol.WorkedExample("What is 2 + 2?", (("Add.", "math_exp", "2+2", "4"),), "So", "4")
  template = protocol.PromptTemplate("Solve.", (example,))
  prompt = template.prompt("What is 3 + 4?", fmt)
  assert prompt.startswith(fmt.start_user + "Solve.") and prompt.endswith(fmt.start_model)
  assert "<start_of_turn>" not in prompt and prompt.count(fmt.end_turn) == 5
  turn = protocol.user_turn("3+4 -> 7", model_turn_closed=False, fmt=fmt)
  assert turn == f"{fmt.end_turn}{fmt.between}{fmt.start_user}3+4 -> 7{fmt.end_turn}{fmt.between}{fmt.start_model}"
  # The action parser reads a turn ended by this family's marker.
  action = protocol.parse_action(f"Add. <math_exp>3+4</math_exp>{fmt.end_turn}", ["math_exp"])
  assert action.kind == "tool" and action.query == "3+4"
  # Gemma's format is unchanged where no vocabulary names another.
  assert protocol.chat_format(object()) is protocol.GEMMA
  assert template.prompt("q") == template.prompt("q", protocol.GEMMA)


def test_bad_tokenizer_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
    HFTokenizerVocabulary(str(tmp_path))
  directory = write_tiny_hf_tokenizer(str(tmp_path / "q"), "qwen3")
  config_path = tmp_path / "q" / "tokenizer_config.json"
  config = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**config, "eos_token": "<|nope|>"}))
  with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|nope\|>' is not in tokenizer.json"):
    HFTokenizerVocabulary(directory)
  config_path.write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
  (tmp_path / "q" / "tokenizer.json").write_text(
      (tmp_path / "q" / "tokenizer.json").read_text().replace("<|im_start|>", "<|im_begin|>"))
  with pytest.raises(ValueError, match="neither ChatML"):
    HFTokenizerVocabulary(directory)
  config_path.write_text('{"eos_token":\n }')
  with pytest.raises(ValueError, match=r"tokenizer_config.json: line 2"):
    HFTokenizerVocabulary(directory)
