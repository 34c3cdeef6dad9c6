document.getElementById("base").textContent = location.pathname;
