(function () {
  "use strict";
  function key(cell) {
    var v = cell ? cell.getAttribute("data-v") : null;
    if (v === null || v === "") { return null; }
    var f = Number(v);
    return isNaN(f) ? v.toLowerCase() : f;
  }
  function sortBy(table, th, col) {
    var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return dir === "ascending" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      var button = th.querySelector("button");
      if (button) { button.addEventListener("click", function () { sortBy(table, th, col); }); }
    });
  });
  document.documentElement.setAttribute("data-sortable", String(tables.length));
})();
