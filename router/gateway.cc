#include "router/gateway.h"

#include <sys/socket.h>

#include <boost/asio/thread_pool.hpp>
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "nlohmann/json.hpp"
#include "router/ollama_api.h"
#include "router/openai_api.h"
#include "router/text/chat.h"
#include "router/responses_api.h"

namespace moeserve::router {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::ordered_json;

}  // namespace

struct Gateway::Impl {
  GatewayOptions opts;
  ApiContext* api;
  std::atomic<int64_t> connections{0};  // open sessions
  net::io_context ioc;
  std::unique_ptr<tcp::acceptor> acceptor, ollama_acceptor;
  std::vector<std::thread> threads;
  std::unique_ptr<ResponseStore> responses;
  int ollama_port = -1;
  // Grammar compiles of first-seen schemas run here, not on the I/O threads.
  // Declared last: joined before the rest goes.
  net::thread_pool compile_pool{2};

  void Accept(tcp::acceptor* a, bool ollama);
  absl::StatusOr<std::unique_ptr<tcp::acceptor>> Listen(const net::ip::address& addr, int port);
};

namespace {

// One HTTP connection. For a generation it is also the completion's sink:
// the completion runs on this connection's strand.
class Session : public std::enable_shared_from_this<Session>, public GenerationSink {
 public:
  Session(tcp::socket socket, Gateway::Impl* gw, bool ollama_port)
      : stream_(std::move(socket)), gw_(gw), ollama_port_(ollama_port) {
    over_limit_ = ++gw_->connections > gw_->opts.max_connections;
  }
  ~Session() override { --gw_->connections; }
  void Start() { Read(); }

  // GenerationSink: the generation runs on this connection's strand.
  void Post(std::function<void()> fn) override { net::post(stream_.get_executor(), std::move(fn)); }
  void OnStart(const Generation& g) override {
    if (!enc_->streaming()) return;
    StartStream(enc_->stream_content_type());
    if (std::string head = enc_->Head(g); !head.empty()) Write(std::move(head));
  }
  void OnEvent(const Generation& g, const GenerationEvent& e) override {
    if (!enc_->streaming()) return;
    if (std::string bytes = enc_->Event(g, e); !bytes.empty()) Write(std::move(bytes));
  }
  void OnDone(const Generation& g) override {
    auto keep = std::move(gen_);  // breaks the session <-> generation cycle
    if (enc_->streaming()) return Write(enc_->End(g), /*last=*/true);
    Reply(http::status::ok, enc_->Body(g), req_.keep_alive());
  }
  void OnError(const Generation& g, const ApiError& e) override {
    auto keep = std::move(gen_);
    if (headers_sent_) return Write(enc_->StreamError(g, e), /*last=*/true);
    Reply(static_cast<http::status>(e.status), enc_->ErrorBody(e), req_.keep_alive(), e.retry_after);
  }

 private:
  // A request is read in three phases, each with its own deadline: idle
  // (nothing of it yet), header, body. Bytes already buffered (pipelining)
  // start the header phase at once. The deadline is our own timer, which
  // cancels the read, not the stream's (which would close the socket before
  // a 408 could be sent).
  void Read() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(std::min<int64_t>(gw_->opts.max_header_bytes, UINT32_MAX)));
    parser_->body_limit(gw_->opts.max_body_bytes);
    stream_.expires_never();
    if (buffer_.size() > 0) return ReadHeader();
    phase_ = Phase::kIdle;
    Arm(gw_->opts.idle_timeout);
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
      if (ec || self->timed_out_) return self->OnReadError(ec);
      self->ReadHeader();  // readable: the first bytes of a request, or the client's close
    });
  }

  void ReadHeader() {
    phase_ = Phase::kHeader;
    Arm(gw_->opts.header_timeout);
    http::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->OnReadError(ec);
      self->phase_ = Phase::kBody;
      self->Arm(self->gw_->opts.body_timeout);
      if (self->parser_->is_done()) return self->OnBody({});
      http::async_read(self->stream_, self->buffer_, *self->parser_,
                       [self](beast::error_code ec, size_t) { self->OnBody(ec); });
    });
  }

  void OnBody(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    ++deadline_generation_;
    deadline_.cancel();
    req_ = parser_->release();
    Handle();
  }

  // Starts the deadline of the current read phase: when it passes, the read is cancelled.
  void Arm(std::chrono::milliseconds timeout) {
    timed_out_ = false;
    deadline_.expires_after(timeout);
    deadline_.async_wait([self = shared_from_this(), gen = ++deadline_generation_](beast::error_code ec) {
      if (ec || gen != self->deadline_generation_) return;
      self->timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
  }

  void OnReadError(beast::error_code ec) {
    ++deadline_generation_;
    deadline_.cancel();
    if (timed_out_) {
      if (phase_ == Phase::kIdle) return Close();  // idle keep-alive connection: HTTP lets the server close it
      const bool header = phase_ == Phase::kHeader;
      return Refuse({408, absl::StrCat("request ", header ? "header" : "body", " not received within ",
                                       (header ? gw_->opts.header_timeout : gw_->opts.body_timeout).count(), " ms"),
                     "invalid_request_error", "", "request_timeout"});
    }
    if (ec == http::error::body_limit) {
      return Refuse({413, absl::StrCat("request body too large: the limit is ", gw_->opts.max_body_bytes, " bytes")});
    }
    if (ec == http::error::header_limit) {
      return Refuse({431, absl::StrCat("request header too large: the limit is ", gw_->opts.max_header_bytes, " bytes")});
    }
    if (ec == http::error::end_of_stream || ec == http::error::partial_message || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == net::error::operation_aborted) {
      return Close();  // the client went away
    }
    if (ec.category() == beast::error_code(http::error::bad_target).category()) {
      return Refuse({400, absl::StrCat("malformed HTTP request: ", ec.message())});
    }
    Close();
  }

  // Answers a request that cannot be read to its end, then keeps reading
  // (and discarding) what the client is still sending for a while, so it
  // sees the answer instead of a reset.
  void Refuse(const ApiError& e) {
    if (gw_->api->metrics) gw_->api->metrics->HttpResponse(e.status);
    auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(e.status), 11);
    res->set(http::field::content_type, "application/json");
    res->set(http::field::server, "moeserve");
    res->keep_alive(false);
    // The request line may be known (a body over the limit): answer in its API's shape.
    bool ollama = false;
    if (parser_) {  // the request line is known once the header began
      const auto t = parser_->get().target();
      ollama = std::string_view(t.data(), t.size()).rfind("/api/", 0) == 0;
    }
    res->body() = ollama ? OllamaErrorJson(e).dump() : ErrorJson(e).dump();
    res->prepare_payload();
    stream_.expires_after(std::chrono::seconds(10));
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
      if (ec) return self->Close();
      beast::error_code ignored;
      self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      self->stream_.expires_after(std::chrono::seconds(10));
      self->Drain();
    });
  }

  void Drain() {
    auto buf = std::make_shared<std::array<char, 65536>>();
    stream_.async_read_some(net::buffer(*buf), [self = shared_from_this(), buf](beast::error_code ec, size_t) {
      if (ec) return self->Close();
      self->Drain();
    });
  }

  void Reply(http::status status, std::string body, bool keep_alive, int retry_after = 0,
             const char* content_type = "application/json") {
    CountResponse(static_cast<int>(status));
    auto res = std::make_shared<http::response<http::string_body>>(status, 11);
    res->set(http::field::content_type, content_type);
    res->set(http::field::server, "moeserve");
    if (retry_after > 0) res->set(http::field::retry_after, std::to_string(retry_after));
    res->keep_alive(keep_alive);
    // Tells clients how long an idle connection stays open, so they do not
    // send on one the server is closing.
    if (keep_alive) {
      res->set("Keep-Alive", absl::StrCat("timeout=", std::chrono::duration_cast<std::chrono::seconds>(
                                                           gw_->opts.idle_timeout).count()));
    }
    res->body() = std::move(body);
    res->prepare_payload();
    http::async_write(stream_, *res, [self = shared_from_this(), res, keep_alive](beast::error_code ec, size_t) {
      if (ec || !keep_alive) return self->Close();
      self->Read();
    });
  }

  // API responses by status code (moeserve_http_responses_total); probes and scrapes are not counted.
  void CountResponse(int code) {
    const std::string_view target(req_.target().data(), req_.target().size());
    const std::string_view path = target.substr(0, target.find('?'));
    if (path == "/metrics" || path == "/health" || path == "/ready") return;
    if (gw_->api->metrics) gw_->api->metrics->HttpResponse(code);
  }

  // An error in the shape of the API the request addressed (Ollama's under /api/, OpenAI's elsewhere).
  void ReplyError(const ApiError& e) {
    const std::string_view target(req_.target().data(), req_.target().size());
    const bool ollama = target.rfind("/api/", 0) == 0;
    Reply(static_cast<http::status>(e.status), ollama ? OllamaErrorJson(e).dump() : ErrorJson(e).dump(),
          req_.keep_alive(), e.retry_after);
  }

  void Close() {
    ++deadline_generation_;
    deadline_.cancel();  // releases the session now, not when the deadline would have passed
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
    if (gen_) {
      gen_->Abort();  // the client went away
      gen_.reset();
    }
  }

  void Handle() {
    const std::string target(req_.target());
    const std::string path = target.substr(0, target.find('?'));
    ApiContext& api = *gw_->api;
    if (over_limit_) {
      ApiError e{503, absl::StrCat("too many connections: the server holds at most ", gw_->opts.max_connections,
                                   "; retry shortly"), "server_error", "", "too_many_connections"};
      e.retry_after = 1;
      return Reply(http::status::service_unavailable, ErrorJson(e).dump(), /*keep_alive=*/false, e.retry_after);
    }
    if (path == "/health") return Reply(http::status::ok, "{}", req_.keep_alive());
    if (path == "/metrics") {
      return Reply(http::status::ok, api.metrics->Serialize(*api.pool), req_.keep_alive(), 0,
                   "text/plain; version=0.0.4");
    }
    if (path == "/ready") {
      if (!api.pool->ready()) {
        return ReplyError({503, "no worker group is up", "server_error", "", "not_ready"});
      }
      return Reply(http::status::ok, json{{"ready", true}}.dump(), req_.keep_alive());
    }
    if (!gw_->opts.api_key.empty()) {
      const std::string auth(req_[http::field::authorization]);
      if (auth != "Bearer " + gw_->opts.api_key) {
        return ReplyError({401, "Incorrect API key provided.", "invalid_request_error", "", "invalid_api_key"});
      }
    }
    if (path == "/v1/models") {
      if (req_.method() != http::verb::get) return ReplyError({405, "use GET"});
      json data = json::array({{{"id", api.served_model_name}, {"object", "model"}, {"created", 0},
                                 {"owned_by", "moeserve"}, {"root", api.served_model_name}, {"parent", nullptr},
                                 {"max_model_len", api.pool->max_model_len()}}});
      if (api.adapters) {
        for (const auto& a : api.adapters->List()) {
          data.push_back({{"id", a->name}, {"object", "model"}, {"created", 0}, {"owned_by", "moeserve"},
                          {"root", a->path}, {"parent", api.served_model_name},
                          {"max_model_len", api.pool->max_model_len()}});
        }
      }
      return Reply(http::status::ok, json{{"object", "list"}, {"data", data}}.dump(), req_.keep_alive());
    }
    if (path == "/v1/load_lora_adapter" || path == "/v1/unload_lora_adapter") {
      // vLLM's runtime adapter API. Loading reads the files on every worker:
      // it runs off the I/O threads, and the reply comes on this connection's strand.
      if (req_.method() != http::verb::post) return ReplyError({405, "use POST"});
      json body;
      if (!ParseBody(&body)) return;
      const bool load = path == "/v1/load_lora_adapter";
      const auto name = text::StringField(body, "lora_name");
      if (!name || name->empty()) return ReplyError(BadRequest("'lora_name' is required", "lora_name"));
      std::string lora_path;
      if (load) {
        const auto p = text::StringField(body, "lora_path");
        if (!p || p->empty()) return ReplyError(BadRequest("'lora_path' is required", "lora_path"));
        lora_path = *p;
      }
      net::post(gw_->compile_pool, [self = shared_from_this(), load, name = *name, lora_path] {
        WorkerPool& pool = *self->gw_->api->pool;
        const absl::Status st = load ? pool.LoadAdapter(name, lora_path).status() : pool.UnloadAdapter(name);
        net::post(self->stream_.get_executor(), [self, st, load, name] {
          if (!st.ok()) return self->ReplyError(FromStatus(st));
          self->Reply(http::status::ok,
                      absl::StrCat("Success: LoRA adapter '", name, load ? "' added successfully." : "' removed successfully."),
                      self->req_.keep_alive(), 0, "text/plain; charset=utf-8");
        });
      });
      return;
    }
    if (path == "/v1/chat/completions" || path == "/v1/completions") {
      if (req_.method() != http::verb::post) return ReplyError({405, "use POST"});
      json body;
      if (!ParseBody(&body)) return;
      const bool chat = path == "/v1/chat/completions";
      GenerationSpec spec;
      OpenAiOptions o;
      if (auto err = DecodeOpenAi(api, chat, body, &spec, &o)) return ReplyError(*err);
      return StartGeneration(std::move(spec), NextResponseId(chat ? "chatcmpl-" : "cmpl-"),
                             MakeOpenAiEncoder(api, chat, o));
    }
    if (path == "/v1/responses") {
      if (req_.method() != http::verb::post) return ReplyError({405, "use POST"});
      json body;
      if (!ParseBody(&body)) return;
      GenerationSpec spec;
      ResponsesRequest r;
      if (auto err = DecodeResponses(api, body, gw_->responses.get(), &spec, &r)) return ReplyError(*err);
      std::string id = r.id;
      return StartGeneration(std::move(spec), std::move(id), MakeResponsesEncoder(api, std::move(r), gw_->responses.get()));
    }
    if (path.rfind("/v1/responses/", 0) == 0) {
      const std::string id = path.substr(std::string_view("/v1/responses/").size());
      if (req_.method() == http::verb::get) {
        auto e = gw_->responses->Get(id);
        if (!e) return ReplyError({404, absl::StrCat("Response with id '", id, "' not found."), "invalid_request_error", "", "not_found"});
        return Reply(http::status::ok, Dump(e->response), req_.keep_alive());
      }
      if (req_.method() == http::verb::delete_) {
        if (!gw_->responses->Delete(id)) {
          return ReplyError({404, absl::StrCat("Response with id '", id, "' not found."), "invalid_request_error", "", "not_found"});
        }
        return Reply(http::status::ok, json{{"id", id}, {"object", "response"}, {"deleted", true}}.dump(),
                     req_.keep_alive());
      }
      return ReplyError({405, "use GET or DELETE"});
    }
    if (path == "/api/chat" || path == "/api/generate") {
      if (req_.method() != http::verb::post) return ReplyError({405, "use POST"});
      json body;
      if (!ParseBody(&body)) return;
      GenerationSpec spec;
      OllamaOptions o;
      if (auto err = DecodeOllama(api, path == "/api/chat", body, &spec, &o)) return ReplyError(*err);
      if (o.load_only) return Reply(http::status::ok, OllamaLoadReply(api, o), req_.keep_alive());
      return StartGeneration(std::move(spec), NextResponseId("ollama-"), MakeOllamaEncoder(api, o));
    }
    if (path.rfind("/api/", 0) == 0) {
      const std::string method(req_.method_string());
      if (auto r = OllamaInfoRoute(api, method, path, req_.body())) {
        return Reply(static_cast<http::status>(r->status), std::move(r->body), req_.keep_alive());
      }
    }
    if (path == "/" && ollama_port_) return Reply(http::status::ok, "Ollama is running", req_.keep_alive(), 0, "text/plain");
    ReplyError({404, absl::StrCat("no route ", path), "invalid_request_error", "", "not_found"});
  }

  // Reads the request body as a JSON object, or answers 400 and returns false.
  bool ParseBody(json* out) {
    if (const int depth = JsonDepth(req_.body(), kMaxJsonDepth + 1); depth > kMaxJsonDepth) {
      ReplyError({400, absl::StrCat("the JSON body nests deeper than ", kMaxJsonDepth, " levels")});
      return false;
    }
    *out = json::parse(req_.body(), nullptr, false);
    if (out->is_discarded() || !out->is_object()) {
      ReplyError({400, "the body is not a JSON object"});
      return false;
    }
    return true;
  }

  void StartGeneration(GenerationSpec spec, std::string id, std::unique_ptr<HttpEncoder> encoder) {
    if (Generation::MayCompileGrammar(spec) && gw_->api->grammars) {
      // Prepare once on the compile pool (which fills the grammar cache; an
      // error is found again below), then start on this connection's strand.
      net::post(gw_->compile_pool, [self = shared_from_this(), spec = std::move(spec), id = std::move(id),
                                    encoder = std::move(encoder)]() mutable {
        Generation::Prepared prep;
        (void)Generation::Prepare(*self->gw_->api, spec, self->gw_->api->backend->max_model_len(), &prep);
        net::post(self->stream_.get_executor(), [self, spec = std::move(spec), id = std::move(id),
                                                 encoder = std::move(encoder)]() mutable {
          self->StartPrepared(std::move(spec), std::move(id), std::move(encoder));
        });
      });
      return;
    }
    StartPrepared(std::move(spec), std::move(id), std::move(encoder));
  }

  void StartPrepared(GenerationSpec spec, std::string id, std::unique_ptr<HttpEncoder> encoder) {
    enc_ = std::move(encoder);
    std::shared_ptr<Generation> g;
    if (auto err = Generation::Start(gw_->api, std::move(spec), std::move(id), shared_from_this(), &g)) {
      return ReplyError(*err);
    }
    if (!g->finished()) {
      gen_ = g;
      WatchClient();
    }
  }

  // While a generation runs no read is outstanding (the next request may only
  // be read after the response), so a client that hangs up is noticed by
  // peeking at the socket every 100 ms: end of stream or an error aborts the
  // generation, and its KV blocks return within a step. Pipelined bytes stay
  // in the socket for the next read.
  void WatchClient() {
    auto timer = std::make_shared<net::steady_timer>(stream_.get_executor(), std::chrono::milliseconds(100));
    timer->async_wait([self = shared_from_this(), timer](beast::error_code ec) {
      if (ec || !self->gen_) return;  // finished: the watch ends with it
      char byte;
      const ssize_t n = ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return self->Close();
      self->WatchClient();
    });
  }

  void StartStream(const char* content_type) {
    if (headers_sent_) return;
    headers_sent_ = true;
    CountResponse(200);
    Write(absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: ", content_type,
                       "\r\nCache-Control: no-cache\r\nServer: moeserve\r\nConnection: close\r\n\r\n"));
  }

  // Queues raw bytes on the socket (SSE); `last` closes the connection after.
  void Write(std::string data, bool last = false) {
    queue_.push_back(std::make_shared<std::string>(std::move(data)));
    if (last) close_after_ = true;
    if (!writing_) WriteNext();
  }

  void WriteNext() {
    if (queue_.empty()) {
      writing_ = false;
      if (close_after_) Close();
      return;
    }
    writing_ = true;
    // Everything queued goes out in one write.
    std::vector<std::shared_ptr<std::string>> bufs(queue_.begin(), queue_.end());
    queue_.clear();
    std::vector<net::const_buffer> views;
    for (auto& b : bufs) views.push_back(net::buffer(*b));
    net::async_write(stream_.socket(), views, [self = shared_from_this(), bufs](beast::error_code ec, size_t) {
      if (ec) {
        self->queue_.clear();
        self->writing_ = false;
        return self->Close();  // aborts the generation if it is still running
      }
      self->WriteNext();
    });
  }

  beast::tcp_stream stream_;
  Gateway::Impl* gw_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  bool ollama_port_ = false;  // accepted on --ollama-port: "/" answers as Ollama does
  std::unique_ptr<HttpEncoder> enc_;  // of the generation running (or last run) on this connection
  std::shared_ptr<Generation> gen_;
  std::deque<std::shared_ptr<std::string>> queue_;
  bool writing_ = false, close_after_ = false, headers_sent_ = false;
  bool over_limit_ = false;                       // beyond max_connections: every request gets 503
  enum class Phase { kIdle, kHeader, kBody };
  Phase phase_ = Phase::kIdle;  // of the request being read
  net::steady_timer deadline_{stream_.get_executor()};
  uint64_t deadline_generation_ = 0;  // a deadline whose generation has moved on does nothing
  bool timed_out_ = false;
};

}  // namespace

void Gateway::Impl::Accept(tcp::acceptor* a, bool ollama) {
  a->async_accept(net::make_strand(ioc), [this, a, ollama](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !a->is_open()) return;  // stopping
    if (ec) {
      // Out of file descriptors or a transient network error: keep serving
      // the open connections and try again shortly.
      auto timer = std::make_shared<net::steady_timer>(ioc, std::chrono::milliseconds(50));
      timer->async_wait([this, a, ollama, timer](beast::error_code) { Accept(a, ollama); });
      return;
    }
    std::make_shared<Session>(std::move(socket), this, ollama)->Start();
    Accept(a, ollama);
  });
}

absl::StatusOr<std::unique_ptr<tcp::acceptor>> Gateway::Impl::Listen(const net::ip::address& addr, int port) {
  beast::error_code ec;
  auto a = std::make_unique<tcp::acceptor>(ioc);
  tcp::endpoint ep(addr, static_cast<uint16_t>(port));
  a->open(ep.protocol(), ec);
  if (!ec) a->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a->bind(ep, ec);
  if (!ec) a->listen(net::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot listen on ", opts.host, ":", port, ": ", ec.message()));
  return a;
}

Gateway::Gateway(GatewayOptions options, ApiContext* api) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(options);
  impl_->api = api;
  impl_->responses = std::make_unique<ResponseStore>(impl_->opts.responses_store_size, impl_->opts.responses_ttl);
}

Gateway::~Gateway() { Stop(); }

absl::StatusOr<int> Gateway::Start() {
  beast::error_code ec;
  auto addr = net::ip::make_address(impl_->opts.host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad --host ", impl_->opts.host));
  ASSIGN_OR_RETURN(impl_->acceptor, impl_->Listen(addr, impl_->opts.port));
  if (impl_->opts.ollama_port >= 0) {
    ASSIGN_OR_RETURN(impl_->ollama_acceptor, impl_->Listen(addr, impl_->opts.ollama_port));
    impl_->ollama_port = impl_->ollama_acceptor->local_endpoint().port();
    impl_->Accept(impl_->ollama_acceptor.get(), /*ollama=*/true);
  }
  impl_->Accept(impl_->acceptor.get(), /*ollama=*/false);
  for (int i = 0; i < std::max(1, impl_->opts.io_threads); ++i) impl_->threads.emplace_back([this] { impl_->ioc.run(); });
  return impl_->acceptor->local_endpoint().port();
}

int Gateway::ollama_port() const { return impl_->ollama_port; }

void Gateway::Stop() {
  if (!impl_) return;
  impl_->ioc.stop();
  impl_->compile_pool.stop();
  impl_->compile_pool.join();
  for (auto& t : impl_->threads)
    if (t.joinable()) t.join();
  impl_->threads.clear();
}

void Gateway::Wait() {
  for (auto& t : impl_->threads)
    if (t.joinable()) t.join();
}

}  // namespace moeserve::router
