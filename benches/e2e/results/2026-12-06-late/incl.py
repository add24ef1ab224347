import sys, re, collections
pats = [(n, re.compile(p)) for n, p in [
 ("otel", r"opentelemetry"), ("tracing span new/record", r"tracing::span::Span::(new|record)|tracing_subscriber.*(new_span|on_new_span|record)"),
 ("tracing enter/exit", r"tracing_subscriber.*(enter|exit)|Span::(do_enter|do_exit)"),
 ("tracing event", r"tracing_subscriber.*(event|on_event)|tracing_core::event"),
 ("serde_json", r"serde_json"), ("sip hash", r"sip::Hasher"), ("clock_gettime", r"clock_gettime"),
 ("tokio time (timer)", r"tokio::runtime::time::(entry|wheel|Handle::(reregister|clear_entry))|TimerEntry"),
 ("tokio spawn", r"tokio::task::spawn|Cell<T,S>::new"), ("redis encode", r"redis::cmd::|write_command|write_arg|ValueCodec.*encode"),
 ("redis decode", r"combine::|ValueCodec.*decode|redis::parser"), ("transcript", r"transcript"),
 ("jemalloc", r"_rjem_|rallocx|sdallocx|imalloc|free_fastpath"), ("memcpy", r"__mem(move|cpy)"),
 ("fmt::write", r"core::fmt::write"), ("cancellation", r"cancellation_token"), ("mail_builder/parser", r"mail_(builder|parser)"),
 ("outcome decide", r"outcome::decide"), ("heartbeat", r"heartbeat"), ("dsn", r"tern_delivery::dsn"), ("content_check", r"content_check"),
 ("Received/DKIM", r"dkim|received"), ("ulid", r"ulid"), ("rfc5322_date", r"rfc5322_date"), ("Mailbox fmt", r"Mailbox as core::fmt"),
 ("oneshot/notify/semaphore", r"tokio::sync::"), ("coalesce", r"tern_queue::coalesce"),
]]
c = collections.Counter(); total=0; stack=[]
def flush():
    global total
    if not stack: return
    total+=1
    for n,p in pats:
        if any(p.search(f) for f in stack): c[n]+=1
for line in sys.stdin:
    line=line.rstrip("\n")
    if not line.strip(): flush(); stack=[]; continue
    if line.startswith("\t") or line.startswith(" "):
        parts=line.strip().split(" ",1)
        if len(parts)==2: stack.append(parts[1])
    else: flush(); stack=[]
flush()
print("samples", total)
for k,v in c.most_common(): print(f"{v:6d} {100*v/total:5.1f}% {k}")
