// The few things htmx does not do for us: follow a run's server-sent events, refresh the graph while it
// runs, mark the selected row, and diff the two checkpoints picked in the graph.
(function () {
  "use strict";

  function refreshGraph() {
    var graph = document.getElementById("graph");
    if (graph) htmx.trigger(graph, "refresh");
  }

  var pending = null;
  function refreshSoon() {  // many events in a burst make one refresh
    if (pending) return;
    pending = setTimeout(function () { pending = null; refreshGraph(); }, 250);
  }

  function describe(result) {
    var usage = result.usage || {};
    var parts = [result.status];
    if (result.answer) parts.push("answer " + result.answer);
    if (result.error) parts.push(result.error);
    parts.push((usage.llm_calls || 0) + " model calls on the thread" +
               (usage.cached_calls ? " (+" + usage.cached_calls + " from the reply cache)" : ""));
    return parts.join(" · ");
  }

  function refreshHead(thread) {  // the thread's status, spend and branches, as the run left them
    if (!document.getElementById("thread-head")) return;
    htmx.ajax("GET", "/thread?t=" + encodeURIComponent(thread),
              {target: "#thread-head", select: "#thread-head", swap: "outerHTML"});
  }

  function openCheckpoint(thread, checkpoint) {
    var query = "t=" + encodeURIComponent(thread) + "&c=" + encodeURIComponent(checkpoint);
    htmx.ajax("GET", "/checkpoint?" + query, {target: "#detail", swap: "innerHTML"});
    history.pushState({}, "", "/thread?" + query);
  }

  function follow(box) {
    if (box.dataset.following) return;
    box.dataset.following = "1";
    var list = box.querySelector(".events");
    var state = box.querySelector(".run-state");
    var outcome = box.querySelector(".outcome");
    var source = new EventSource(box.dataset.events);
    function add(text, cls) {
      var item = document.createElement("li");
      item.textContent = text;
      if (cls) item.className = cls;
      list.appendChild(item);
    }
    source.addEventListener("progress", function (e) {
      add(JSON.parse(e.data).text);
      refreshSoon();
    });
    source.addEventListener("done", function (e) {
      var result = JSON.parse(e.data).result || {};
      source.close();
      state.textContent = result.status || "done";
      state.className = "run-state status " + (result.status || "done");
      outcome.textContent = describe(result);
      box.classList.add("finished");
      refreshGraph();
      refreshHead(box.dataset.thread);
      if (result.checkpoint_id) openCheckpoint(box.dataset.thread, result.checkpoint_id);
    });
    source.addEventListener("error", function (e) {
      if (e.data) {  // the run's own error event; a dropped connection has no data
        source.close();
        state.textContent = "error";
        state.className = "run-state status failed";
        outcome.textContent = JSON.parse(e.data).text;
        box.classList.add("finished");
        refreshGraph();
        refreshHead(box.dataset.thread);
      } else if (source.readyState === EventSource.CLOSED) {
        state.textContent = "connection lost";
      }
    });
  }

  htmx.onLoad(function (root) {
    (root.matches && root.matches(".run[data-events]") ? [root] : [])
      .concat(Array.prototype.slice.call(root.querySelectorAll(".run[data-events]")))
      .forEach(follow);
  });

  document.addEventListener("click", function (e) {
    var link = e.target.closest(".row a.cp");
    if (link) {
      document.querySelectorAll(".row.selected").forEach(function (r) { r.classList.remove("selected"); });
      link.closest(".row").classList.add("selected");
    }
    var button = e.target.closest(".diff-picked");
    if (button && !button.disabled) {
      var picked = Array.prototype.map.call(document.querySelectorAll(".pick:checked"), function (b) { return b.value; });
      var thread = button.dataset.thread;
      var url = "/diff?a=" + encodeURIComponent(thread) + "&ac=" + encodeURIComponent(picked[0]) +
                "&b=" + encodeURIComponent(thread) + "&bc=" + encodeURIComponent(picked[1]);
      htmx.ajax("GET", url, {target: "#detail", swap: "innerHTML"});
    }
  });

  document.addEventListener("change", function (e) {
    if (!e.target.matches(".pick")) return;
    var checked = document.querySelectorAll(".pick:checked");
    if (checked.length > 2) e.target.checked = false;  // a diff has two sides
    var count = document.querySelectorAll(".pick:checked").length;
    document.querySelectorAll(".diff-picked").forEach(function (b) { b.disabled = count !== 2; });
  });

  document.body.addEventListener("graph-changed", function () {  // a branch was made off this thread
    var head = document.getElementById("thread-head");
    if (head) refreshHead(head.dataset.thread);
  });

  // Whatever loaded the detail pane (a row, a parent link, a finished run), the graph marks that checkpoint.
  function markSelected() {
    var shown = document.querySelector("#detail .checkpoint[data-checkpoint]");
    if (!shown) return;
    document.querySelectorAll("#graph .row").forEach(function (row) {
      row.classList.toggle("selected", row.dataset.checkpoint === shown.dataset.checkpoint);
    });
  }
  document.body.addEventListener("htmx:afterSettle", markSelected);

  document.body.addEventListener("htmx:responseError", function (e) {
    // Errors come back as a fragment that says what to do; show it where the request aimed.
    var target = e.detail.target;
    if (target && e.detail.xhr.responseText) target.innerHTML = e.detail.xhr.responseText;
  });
})();
