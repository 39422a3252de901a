(function () {
  "use strict";
  var thumbs = JSON.parse(document.getElementById("thumbs").textContent);
  Array.prototype.forEach.call(document.querySelectorAll("img[data-t]"), function (img) {
    var uri = thumbs[img.getAttribute("data-t")];
    if (uri) { img.src = uri; }
  });
  var form = document.getElementById("filters");
  var cases = Array.prototype.slice.call(document.querySelectorAll("article.case"));
  function value(id) { var el = document.getElementById(id); return el ? el.value : ""; }
  function checked(id) { var el = document.getElementById(id); return el ? el.checked : false; }
  function num(id, dflt) {
    var v = value(id);
    if (v === "") { return dflt; }
    var f = Number(v);
    return isNaN(f) ? dflt : f;
  }
  function apply() {
    var fail = checked("f-fail"), cat = value("f-cat"), sub = value("f-sub"), who = value("f-who");
    var lo = num("f-min", -Infinity), hi = num("f-max", Infinity);
    var text = value("f-text").trim().toLowerCase();
    var shown = 0;
    cases.forEach(function (c) {
      var d = c.dataset;
      var ranks = d.ranks.split(" ").map(function (r) { return r === "inf" ? Infinity : Number(r); });
      var ok = (!fail || d.fail === "1")
        && (cat === "" || d.cat === cat)
        && (sub === "" || d.sub === sub)
        && (who === "" || d.winner === who)
        && ranks.some(function (r) { return r >= lo && r <= hi; })
        && (text === "" || d.search.indexOf(text) !== -1);
      c.hidden = !ok;
      if (ok) { shown += 1; }
    });
    document.getElementById("shown").textContent = String(shown);
    document.documentElement.setAttribute("data-shown", String(shown));
  }
  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  form.addEventListener("submit", function (e) { e.preventDefault(); apply(); });
  apply();
  document.documentElement.setAttribute("data-ready", "1");
})();
