/* "Go back" on error pages: back in history when there is one, else the link's own target (home).
 * Not a javascript: link, which the Content-Security-Policy blocks. */
(function () {
  "use strict";
  document.querySelectorAll("a.history-back").forEach(function (link) {
    link.addEventListener("click", function (event) {
      if (window.history.length > 1) {
        event.preventDefault();
        window.history.back();
      }
    });
  });
})();
