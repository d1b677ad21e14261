/* Tables that do not fit their box become stacked cards (class "stacked", drawn by storyloop.css): one card
 * per row, each cell led by its column's header, instead of columns hidden behind a sideways scroll.
 * A table that fits once its cells wrap stays a table. The labels are copied from the header row(s) into
 * data-label; the check runs again when the window is resized, when a <details> opens, and when a script
 * rewrites a table's rows (the trainer page's history). Without JavaScript a wide table scrolls in its box.
 */
(function () {
  "use strict";

  // The header cell above each column, row by row (rowspan and colspan included: the models page has a
  // two-row header); a column under a spanning cell is labelled with both, "Blind evaluation · Grammar".
  function columnLabels(table) {
    var grid = [];
    Array.prototype.forEach.call(table.tHead ? table.tHead.rows : [], function (row, r) {
      grid[r] = grid[r] || [];
      var c = 0;
      Array.prototype.forEach.call(row.cells, function (cell) {
        while (grid[r][c] !== undefined) c++;
        for (var dr = 0; dr < cell.rowSpan; dr++) {
          for (var dc = 0; dc < cell.colSpan; dc++) (grid[r + dr] = grid[r + dr] || [])[c + dc] = cell;
        }
        c += cell.colSpan;
      });
    });
    var labels = [];
    grid.forEach(function (row) {
      row.forEach(function (cell, c) {
        var text = (cell.innerText || cell.textContent).replace(/\s+/g, " ").trim();  // innerText: a <br> is a space
        labels[c] = labels[c] || [];
        if (text && labels[c].indexOf(text) < 0) labels[c].push(text);
      });
    });
    return labels.map(function (parts) { return parts.join(" · "); });
  }

  function label(table) {
    var labels = columnLabels(table);
    Array.prototype.forEach.call(table.tBodies, function (body) {
      Array.prototype.forEach.call(body.rows, function (row) {
        var c = 0;
        Array.prototype.forEach.call(row.cells, function (cell) {
          if (cell.tagName === "TD" && labels[c] && !cell.hasAttribute("data-label")) cell.setAttribute("data-label", labels[c]);
          c += cell.colSpan;
        });
      });
    });
  }

  function fit(table) {
    var box = table.parentElement;
    if (!box.clientWidth) return;  // not shown (a closed <details>): checked when it opens
    table.classList.remove("stacked");
    if (table.offsetWidth > box.clientWidth + 1) table.classList.add("stacked");
  }

  var tables = Array.prototype.slice.call(document.querySelectorAll(".table-wrap > table"));
  tables.forEach(function (table) {
    label(table);
    fit(table);
    new MutationObserver(function () { label(table); fit(table); }).observe(table, { childList: true, subtree: true });
  });
  var pending = null;
  window.addEventListener("resize", function () {
    if (pending === null) pending = requestAnimationFrame(function () { pending = null; tables.forEach(fit); });
  });
  document.addEventListener("toggle", function (event) {
    tables.forEach(function (table) { if (event.target.contains(table)) fit(table); });
  }, true);
})();
