// Writes each fuzz target's seed corpus (made here, nothing downloaded):
//   fuzz_seeds DIR   -> DIR/<target>/seed_N, and DIR/<target>/carried_N from
//                       tests/fuzz/corpus/<target>.b64
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "base/harmony_tokens.h"
#include "moeserve/v1/moeserve.pb.h"
#include "moeserve/worker/v1/worker.pb.h"
#include "tools/checkpoint_gen.h"
#include "tools/lora_gen.h"

namespace fs = std::filesystem;

namespace {

void Write(const fs::path& dir, int i, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream(dir / ("seed_" + std::to_string(i)), std::ios::binary) << bytes;
}

std::string Read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moeserve;
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  const fs::path out = argv[1];

  // safetensors + config.json: a generated tiny checkpoint's files.
  const fs::path ck = out / "tiny_checkpoint";
  CheckpointGenOptions o;
  o.config = *PresetConfig("tiny");
  o.max_shard_bytes = 64 << 10;  // several small shards
  if (!GenerateCheckpoint(ck.string(), o).ok()) return 1;
  int n = 0;
  const std::string config = Read(ck / "config.json");
  for (const auto& e : fs::directory_iterator(ck)) {
    if (e.path().extension() == ".safetensors") Write(out / "fuzz_safetensors", n++, config + '\xff' + Read(e.path()));
  }
  Write(out / "fuzz_safetensors", n++, std::string("{}\xff", 3) + std::string(8, '\0'));

  // Model directories: config.json, 0xff, the index, 0xff, then shards with
  // 3-byte lengths (fuzz_checkpoint.cc). A one-layer model with a 64-token
  // vocabulary keeps them near 20 KB: in several shards, and in one file
  // without an index; MXFP4 and BF16 experts.
  n = 0;
  for (const char* experts : {"mxfp4", "bf16"}) {
    for (int64_t shard_bytes : {int64_t{12} << 10, int64_t{1} << 30}) {
      CheckpointGenOptions mo;
      mo.config = *PresetConfig("tiny");
      mo.config.num_hidden_layers = 1;
      mo.config.layer_types.resize(1);
      mo.config.hidden_size = 32;
      mo.config.num_attention_heads = 2;
      mo.config.num_key_value_heads = 1;
      mo.config.head_dim = 16;
      mo.config.intermediate_size = 32;
      mo.config.num_local_experts = 4;
      mo.config.num_experts_per_tok = 2;
      mo.config.vocab_size = 64;
      mo.experts = experts;
      mo.max_shard_bytes = shard_bytes;
      const fs::path dir = out / "tiny_model_dir";
      fs::remove_all(dir);
      if (absl::Status st = GenerateCheckpoint(dir.string(), mo); !st.ok()) {
        std::fprintf(stderr, "fuzz_seeds: %s\n", st.ToString().c_str());
        return 1;
      }
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() == ".safetensors") files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
      const bool single = shard_bytes > (int64_t{1} << 20);
      std::string seed = Read(dir / "config.json") + '\xff' + (single ? "" : Read(dir / "model.safetensors.index.json")) + '\xff';
      for (const fs::path& f : files) {
        const std::string bytes = Read(f);
        seed += {static_cast<char>(bytes.size() & 0xff), static_cast<char>((bytes.size() >> 8) & 0xff),
                 static_cast<char>((bytes.size() >> 16) & 0xff)};
        seed += bytes;
      }
      Write(out / "fuzz_checkpoint", n++, seed);
    }
  }

  // PEFT adapters: adapter_config.json, 0xff, adapter_model.safetensors; one
  // layer of the tiny model at rank 1 and 2 keeps them small.
  n = 0;
  ModelConfig one_layer = *PresetConfig("tiny");
  one_layer.num_hidden_layers = 1;
  for (const char* layout : {"attention", "per-expert", "fused"}) {
    for (int rank : {1, 2}) {
      LoraGenOptions lo;
      lo.layout = layout;
      lo.rank = rank;
      lo.router = rank == 2;
      lo.rslora = rank == 2;
      lo.patterns = rank == 2;
      lo.dtype = rank == 1 ? "bf16" : "f32";
      const fs::path dir = out / "tiny_adapter";
      if (!GenerateLoraAdapter(dir.string(), one_layer, lo).ok()) return 1;
      Write(out / "fuzz_lora_adapter", n++,
            Read(dir / "adapter_config.json") + '\xff' + Read(dir / "adapter_model.safetensors"));
    }
  }

  const std::vector<std::string> texts = {
      "Hello, world! How's it going?", "def f(x):\n    return x**2  # square\n", "日本語のテキストと中文",
      "emoji 🙂👍🏽 and accents: café naïve", "<|start|>user<|message|>hi<|end|>", "   \t\n\n  spaces",
      std::string("\xff\xfe invalid \xc3", 12), "I'm you're we've they'll 1234567890 3.14159"};
  n = 0;
  for (const std::string& t : texts) Write(out / "fuzz_tokenizer", n++, t);
  n = 0;
  for (const std::string& t : texts) Write(out / "fuzz_stop_matcher", n++, std::string("\x02\x02ou\x03'm ") + t);

  // JSON Schema: a schema, NUL, a document (valid or nearly).
  n = 0;
  for (const auto& [schema, doc] : std::vector<std::pair<std::string, std::string>>{
           {R"({"type":"object","properties":{"a":{"type":"integer","minimum":-3,"maximum":250},"b":{"type":"string","maxLength":4}},"required":["a"]})", R"({"a":17,"b":"xy"})"},
           {R"({"type":"array","items":{"enum":["x",1,null]},"minItems":1,"maxItems":3})", R"(["x",1])"},
           {R"({"$defs":{"n":{"type":"object","properties":{"k":{"type":"array","items":{"$ref":"#/$defs/n"}}}}},"$ref":"#/$defs/n"})", R"({"k":[{"k":[]}]})"},
           {R"({"type":"string","pattern":"^[a-c]+(x|y){1,2}$"})", R"("abx")"},
           {R"({"type":"number","minimum":0,"maximum":10})", "9.75"},
           {R"({"anyOf":[{"type":"string","format":"date"},{"type":"boolean"}]})", R"("2024-01-31")"},
           {R"({"type":"object","additionalProperties":{"type":"boolean"},"properties":{"id":{"const":"x"}}})", R"({"id":"x","ok":true})"},
           {"true", R"({"a":[1,2.5e3,"é"]})"}}) {
    Write(out / "fuzz_json_schema", n++, schema + std::string(1, '\0') + doc);
  }

  // Harmony: a few token-code sequences (two bytes per token, see the target).
  n = 0;
  for (int variant = 0; variant < 4; ++variant) {
    std::string s;
    for (int k = 0; k < 64; ++k) {
      const uint16_t v = static_cast<uint16_t>((k * 37 + variant * 11) * (k % 3 == 0 ? 4 : 1) + (k % 4));
      s.push_back(static_cast<char>(v & 0xff));
      s.push_back(static_cast<char>(v >> 8));
    }
    Write(out / "fuzz_harmony_parser", n++, s);
  }

  const std::vector<std::string> chats = {
      R"({"messages":[{"role":"user","content":"Hi!"}]})",
      R"({"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"What is 2+2?"}]}],"reasoning_effort":"low"})",
      R"({"messages":[{"role":"user","content":"Weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]})",
      R"({"messages":[{"role":"developer","content":"Answer in JSON."},{"role":"assistant","reasoning_content":"thinking","content":"ok"},{"role":"user","content":"again"}],"reasoning_effort":"high"})"};
  n = 0;
  for (const std::string& c : chats) Write(out / "fuzz_chat_render", n++, c);

  // Requests: a selector byte (0 chat, 1 completions, 2 responses, 3 Ollama chat, 4 Ollama generate), then the body.
  const std::vector<std::string> requests = {
      R"({"model":"gpt-oss-20b","messages":[{"role":"user","content":"Hi"}],"temperature":0.7,"top_p":0.9,"max_tokens":64,"stream":true,"stream_options":{"include_usage":true}})",
      R"({"messages":[{"role":"user","content":"Hi"}],"n":3,"seed":42,"logprobs":true,"top_logprobs":5,"stop":["

","END"],"stop_token_ids":[200012],"presence_penalty":0.5,"frequency_penalty":-0.5,"top_k":40,"min_p":0.05,"return_token_ids":true})",
      R"({"messages":[{"role":"user","content":"Weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}}})",
      R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required","max_completion_tokens":10,"reasoning_effort":"medium"})"};
  n = 0;
  for (const std::string& r : requests) Write(out / "fuzz_openai_request", n++, std::string(1, '\0') + r);
  for (const std::string& r : {std::string(R"({"prompt":"Once upon a time","max_tokens":16,"logprobs":2,"echo":false})"),
                               std::string(R"({"prompt":[1,2,3,4],"stop":"x","n":2,"seed":1})")}) {
    Write(out / "fuzz_openai_request", n++, "\x01" + r);
  }
  for (const std::string& r :
       {std::string(R"({"model":"gpt-oss-20b","input":"Hi","instructions":"Be brief.","max_output_tokens":32,"reasoning":{"effort":"low"},"metadata":{"k":"v"},"stream":true})"),
        std::string(R"({"input":[{"role":"user","content":[{"type":"input_text","text":"Weather?"}]},{"type":"function_call","call_id":"c1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},{"type":"function_call_output","call_id":"c1","output":"sunny"},{"type":"reasoning","id":"rs_1","summary":[],"content":[{"type":"reasoning_text","text":"think"}]}],"tools":[{"type":"function","name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}},"strict":true}],"tool_choice":"required","top_logprobs":2,"include":["message.output_text.logprobs"]})")}) {
    Write(out / "fuzz_openai_request", n++, "\x02" + r);
  }
  for (const std::string& r :
       {std::string(R"({"model":"gpt-oss-20b","messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"","thinking":"hm","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},{"role":"tool","content":"ok","tool_name":"f"}],"tools":[{"type":"function","function":{"name":"f"}}],"think":"high","options":{"temperature":0.5,"top_k":20,"num_predict":16,"stop":["x"],"repeat_penalty":1.1,"num_ctx":4096,"seed":3},"keep_alive":"5m","stream":false})")}) {
    Write(out / "fuzz_openai_request", n++, "\x03" + r);
  }
  for (const std::string& r :
       {std::string(R"({"model":"gpt-oss-20b:latest","prompt":"Why is the sky blue?","system":"Be brief.","think":false,"options":{"num_predict":8}})"),
        std::string(R"({"model":"gpt-oss-20b","prompt":"<|start|>user<|message|>Hi<|end|>","raw":true,"stream":false})")}) {
    Write(out / "fuzz_openai_request", n++, "\x04" + r);
  }

  // Public gRPC API: GenerateRequest (text, token ids, chat with tools and
  // sampling) after a 0 byte; DetokenizeRequest after a 1 byte.
  n = 0;
  {
    auto generate = [&](const moeserve::v1::GenerateRequest& r) {
      Write(out / "fuzz_grpc_request", n++, std::string(1, '\0') + r.SerializeAsString());
    };
    moeserve::v1::GenerateRequest r;
    r.set_text("Once upon a time");
    r.set_max_tokens(16);
    r.set_temperature(0.7f);
    r.add_stop("\n\n");
    r.set_logprobs(true);
    r.set_top_logprobs(2);
    generate(r);
    r.Clear();
    for (int t : {1, 2, 3, 200006}) r.mutable_token_ids()->add_ids(t);
    r.set_n(2);
    r.set_seed(7);
    r.set_top_k(40);
    r.set_min_p(0.05f);
    r.set_repetition_penalty(1.1f);
    (*r.mutable_logit_bias())[13] = -5.f;
    r.add_stop_token_ids(200012);
    generate(r);
    r.Clear();
    r.set_model("gpt-oss-20b");
    auto* chat = r.mutable_chat();
    auto* m = chat->add_messages();
    m->set_role("user");
    m->set_content("Weather in Paris?");
    m = chat->add_messages();
    m->set_role("assistant");
    m->set_reasoning_content("Call the tool.");
    auto* call = m->add_tool_calls();
    call->set_id("c1");
    call->set_name("get_weather");
    call->set_arguments(R"({"city":"Paris"})");
    m = chat->add_messages();
    m->set_role("tool");
    m->set_tool_call_id("c1");
    m->set_name("get_weather");
    m->set_content("sunny");
    auto* tool = chat->add_tools();
    tool->set_name("get_weather");
    tool->set_description("The weather in a city.");
    tool->set_parameters_json(R"({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"array","items":{"type":"integer"}}},"required":["city"]})");
    chat->set_reasoning_effort("low");
    r.set_presence_penalty(0.5f);
    r.set_frequency_penalty(-0.5f);
    r.set_top_p(0.9f);
    generate(r);
    moeserve::v1::DetokenizeRequest d;
    for (int t : {200006, 1428, 200008, 12194, 200007, 0, 201087}) d.add_ids(t);
    Write(out / "fuzz_grpc_request", n++, std::string(1, '\1') + d.SerializeAsString());
  }

  // Worker steps: a prefill, a decode diff, bad block ids, bad sampling.
  namespace v1 = worker::v1;
  n = 0;
  auto step = [&](const v1::StepRequest& r) { Write(out / "fuzz_worker_step", n++, r.SerializeAsString()); };
  {
    v1::StepRequest r;
    r.set_step_id(1);
    auto* s = r.add_new_sequences();
    s->set_id(1);
    for (int t = 0; t < 10; ++t) s->add_tokens(t * 7 % 512);
    s->set_num_scheduled(10);
    for (int b = 0; b < 3; ++b) s->add_full_blocks(b), s->add_sliding_blocks(b);
    s->mutable_sampling()->set_temperature(0.7f);
    s->mutable_sampling()->set_top_k(5);
    s->mutable_sampling()->set_logprobs(true);
    s->mutable_sampling()->set_top_logprobs(3);
    s->set_num_prompt_tokens(10);
    step(r);
    auto* run = r.add_running();
    run->set_id(1);
    run->set_num_scheduled(1);
    run->add_new_full_blocks(3);
    step(r);
    s->set_full_blocks(0, 9999);
    step(r);
    s->mutable_sampling()->set_top_p(-1.0f);
    step(r);
  }
  {
    // Prompt logprobs over a chunk that ends inside the prompt; masks that
    // follow the step (the harness takes the request's own masks as the follow-up).
    v1::StepRequest r;
    r.set_step_id(2);
    auto* s = r.add_new_sequences();
    s->set_id(2);
    for (int t = 0; t < 12; ++t) s->add_tokens(t * 11 % 512);
    s->set_num_prompt_tokens(12);
    s->set_num_scheduled(8);
    for (int b = 0; b < 3; ++b) s->add_full_blocks(b), s->add_sliding_blocks(b);
    s->mutable_sampling()->set_prompt_logprobs(true);
    s->mutable_sampling()->set_logprobs(true);
    s->mutable_sampling()->set_top_logprobs(2);
    step(r);
    s->set_num_scheduled(12);
    r.set_masks_follow(true);
    auto* m = r.add_masks();
    m->set_id(2);
    for (int32_t t : {3, 9, 27}) m->mutable_mask()->add_allowed(t);
    step(r);
  }

  // Corpora carried from earlier long runs (tests/fuzz/corpus/<target>.b64:
  // one input per line, base64), so a long run can go on where the last one
  // stopped. They were made by the fuzzers from the seeds above.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(MOESERVE_FUZZ_CORPUS_DIR, ec)) {
    if (e.path().extension() != ".b64") continue;
    std::ifstream in(e.path());
    n = 0;
    int line_no = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_no;
      std::string bytes;
      if (line.empty()) continue;
      if (!absl::Base64Unescape(line, &bytes)) {
        std::fprintf(stderr, "fuzz_seeds: %s:%d is not base64\n", e.path().c_str(), line_no);
        return 1;
      }
      const fs::path dir = out / e.path().stem();
      fs::create_directories(dir);
      std::ofstream(dir / ("carried_" + std::to_string(n++)), std::ios::binary) << bytes;
    }
  }
  return 0;
}
